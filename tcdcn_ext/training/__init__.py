"""Training and evaluation. Depends on :mod:`tcdcn_ext.inference` (boxes, preprocessing, the prediction loop),
:mod:`tcdcn_ext.models` and :mod:`tcdcn_ext.util`.

* :mod:`.datasets`: :class:`~.datasets.FaceSet` and the loaders; :mod:`.augment`: the training augmentation;
* :mod:`.train`: :class:`~.train.TrainConfig`, :func:`~.train.train`; :mod:`.early_stopping`, :mod:`.distributed`;
* :mod:`.evaluate`: the paper's metrics; :mod:`.reports`: the result files;
* :mod:`.calibration`: the fit of the detector -> annotated box calibration.
"""
