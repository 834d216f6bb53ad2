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
# # 02 Preprocessing
#
# ## Overview
#
# The networks of chapters 03 and 04 need every patient's PET and CT as two arrays of the same
# size, in the same physical units and on the same grid. This chapter turns each patient's
# DICOM (or NIfTI) export into exactly that, following the preprocessing paragraph of the paper
# (section 2.5):
#
# 1. **Reading and harmonisation.** The PET and CT series are found by their DICOM tags, not by
#    file names. Stored CT values become Hounsfield units (HU) with each slice's own
#    RescaleSlope/RescaleIntercept; PET activity in Bq/ml becomes body-weight SUV from the
#    injected dose, the injection and scan times, the half-life of Ga-68 (67.7 min) and the
#    patient's weight.
# 2. **Artefact rules.** CT is limited to -1024..3071 HU, negative PET values are set to 0, and
#    everything outside the body (the scanner bed, cushions, air) is blanked.
# 3. **A common grid.** A box of 750 x 500 x 500 mm (head-feet x front-back x right-left) is
#    placed 5 cm above the top of the lungs and centred on the body, and both images are
#    resampled into it as 75 x 50 x 50 voxels of 10 mm: each voxel holds the average of the
#    original image over its 10 mm cube, so a small lesion keeps its total uptake wherever the
#    grid happens to cut it.
#
# Patients whose images cannot be used are not silently dropped: they are listed below with the
# reason. Results are cached: running the chapter again only processes patients whose files or
# settings changed.
#
# **Intensity normalisation is not done here.** The paper normalises the volumes with statistics
# of the training data; we fit those statistics inside each cross-validation fold, on its training
# patients only (chapter 03), so that no test patient influences them.

# %% [markdown]
# ```{glue:md} key_findings
# :format: myst
# ```

# %% tags=["parameters"]
data_dir = "data/synthetic"
work_dir = "work"
n_qc_patients = 3
on_error = "skip"
n_jobs = 2  # patients preprocessed at a time (the book passes its --jobs)

# %%
from prrt_utils.report.notebook import setup_notebook

setup_notebook(data_dir)

# %%
from pathlib import Path

from IPython.display import Markdown, display

from prrt_utils.data import preprocess
from prrt_utils.data import qc
from prrt_utils.data.preprocess import PreprocessConfig, run_preprocessing
from prrt_utils.report import findings

cfg = PreprocessConfig(on_error=on_error)
imaging_dir = Path(data_dir) / "imaging"
cohort_csv = Path(work_dir) / "cohort" / "cohort.csv"

# %% [markdown]
# ## The target grid
#
# Every patient's box has the same size and voxel spacing; only its position differs (it follows
# the patient's lungs and body). Array axes are listed in storage order.

# %%
display(Markdown(qc.describe_grid_mm(cfg) + "."))
qc.grid_table(cfg)

# %% [markdown]
# ## Running the stage
#
# Patients come from the cohort table of chapter 01 (`has_imaging`); without it, every folder
# under the imaging directory is processed. Finished patients are taken from the cache.

# %%
index = run_preprocessing(
    cfg, cohort_csv if cohort_csv.exists() else None, imaging_dir, work_dir, progress=False, n_jobs=int(n_jobs)
)
index["status"].value_counts().rename_axis("status").to_frame("patients")

# %% [markdown]
# ## Acquisition facts and the placement of the box
#
# One row per preprocessed patient: scanner, voxel sizes of the original series, CT kernel and
# contrast, the rescale tags that were undone, the body in the CT as a share of the patient weight
# (above 1.3 the weight is wrong and the patient is refused), and how the box was anchored.
# `pet_coverage` and `ct_coverage` give the share of the box the original series covers (the rest
# is filled with air, or no activity, and shows as black).

# %%
qc_table = preprocess.read_table(work_dir, "qc")
columns = [
    "patient_id", "pet_scanner_model", "pet_spacing_mm", "ct_spacing_mm", "ct_kernel", "ct_contrast",
    "ct_rescale_slope", "ct_rescale_intercept", "pet_suv_factor", "ct_body_mass_to_weight", "anchor",
    "pet_coverage", "ct_coverage",
]
qc_table[[c for c in columns if c in qc_table.columns]]

# %% [markdown]
# ## Quality control of a few patients
#
# For each patient: the PET maximum-intensity projection seen from the front, a transverse CT
# slice through the hottest PET voxel (outside the bladder region), a coronal CT slice through
# the body's centre, and the same coronal slice with the PET laid over it in colour. The
# patient's right is on the left of each image, as radiologists view them; the head is at the top.
# Hover over a voxel to read its SUV or HU.

# %%
ok = index.loc[index["status"] == "ok", "patient_id"].tolist()
qc_patients = ok[: int(n_qc_patients)]
for pid in qc_patients:
    qc.qc_figure(work_dir, pid).show()

# %% [markdown]
# Every preprocessed patient can be checked the same way: choose the patient from the menu (top
# right). PET is shown as a nuclear-medicine reader sets it (SUVbw 0-10, dark = high uptake), CT in a
# soft-tissue window (-160 to 240 HU), and the fused view lays the PET of the CT's coronal slice over it.

# %%
qc.qc_browser(work_dir, ok).show()

# %% [markdown]
# ## Before and after harmonisation
#
# The same patients' intensities as stored in their files and after conversion. CT series store
# their values with different slopes and offsets, so the stored-value histograms are shifted or
# stretched against each other; in HU they line up (air near -1000, fat near -100, soft tissue
# near 40). PET activity in Bq/ml scales with the injected dose and the patient's weight; in SUV
# the patients become comparable. PET histograms count voxels with activity only.

# %%
summary = qc.harmonisation_summary(imaging_dir, qc_patients)
qc.histogram_figure(summary).show()

# %%
summary.to_frame().round(2)

# %% [markdown]
# ## Excluded patients
#
# Every patient whose images could not be used, with the reason. With `on_error = "stop"` the
# chapter would instead stop at the first of them with this message.

# %%
exclusions = preprocess.read_table(work_dir, "exclusions")
exclusions if len(exclusions) else Markdown("No patient was excluded at this stage.")

# %% [markdown]
# ## Summary
#
# * Each usable patient now has a PET in SUVbw and a CT in HU on the same 75 x 50 x 50 grid of
#   10 mm voxels, stored in `work/preprocessed/<patient id>.npz`, with the index, the exclusion
#   list, the acquisition facts and the settings beside them.
# * The figures above are the check that PET and CT are aligned, that the box sits on the
#   trunk and that harmonisation removed the differences between scanners and injections.
# * Intensity normalisation is deliberately left to the training of each fold (chapter 03).

# %%
findings.preprocessing_findings(index).glue()
