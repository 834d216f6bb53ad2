# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reproducibility
#
# ## Overview
#
# What this book ran with, so that anyone can run it again and get the same numbers: the
# software versions, the seed, the configuration every stage saved beside its outputs, a
# fingerprint of the input data, and how long each page took to execute. On a CPU the same
# versions, seed, configuration and inputs give the same predictions, to the last digit; on a GPU,
# floating-point sums may run in another order and differ in the last digits.

# %% tags=["parameters"]
data_dir = "data/synthetic"
work_dir = "work"
seed = 0

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
import json
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from prrt_utils.report import notebook

# %% [markdown]
# ## Software

# %%
notebook.environment_report()

# %% [markdown]
# ## Seed
#
# One seed fixes the synthetic cohort, the cross-validation splits and the initial weights and
# batch order of every network (each fold is seeded from the seed, the repeat, the fold and the
# model, so folds give the same result in any order or process).

# %%
display(Markdown(f"Seed: **{seed}**"))

# %% [markdown]
# ## Input data
#
# SHA-256 of the clinical table and of the whole imaging tree (every file's path and bytes). A
# different hash means different inputs.

# %%
notebook.data_fingerprint(data_dir)

# %% [markdown]
# ## Configuration of every stage
#
# Each stage writes the configuration it ran with beside its outputs; these are those files.

# %%
for row in notebook.stage_configs(work_dir).itertuples():
    display(Markdown(f"**{row.file}**\n\n```yaml\n{row.content}\n```"))

# %% [markdown]
# ## Execution time of each page
#
# Wall-clock seconds of each step of this build. The folds of every model are trained in one step
# before the model pages, which then read them. The model pages and chapters 03-08 only read stored
# results, so they are executed side by side (as many at a time as the build's worker processes):
# their seconds overlap, and the row "pages above, ... at a time" gives the wall clock of the group.

# %%
timings_path = Path("book/executed/timings.json")
timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
pd.DataFrame(list(timings.items()), columns=["step", "seconds"])

# %% [markdown]
# ## Summary
#
# The tables above are everything needed to repeat this run: install the listed versions
# (`make book` does), use the same seed and configuration, and check that the input hashes match.
