"""Training and evaluation: datasets and augmentation, the training loop, task-wise early stopping, data-parallel
training, the paper's metrics, and the detector box calibration fit. Depends on :mod:`tcdcn_ext.inference`
(preprocessing), :mod:`tcdcn_ext.models` and :mod:`tcdcn_ext.util`."""
