"""Landmarks on images. Depends on :mod:`tcdcn_ext.models`, :mod:`tcdcn_ext.ops` and :mod:`tcdcn_ext.util` (and on
OpenCV): nothing here imports :mod:`tcdcn_ext.training` (:mod:`.boxes` names its FaceSet in a type hint only).

* :mod:`.images`: any image input -> checked 8-bit :class:`~.images.Pixels`, or :class:`~.images.ImageError`;
* :mod:`.boxes`: the box frame, box -> input maps, IoU, the MTFL box model;
* :mod:`.preprocess`: the network input (:func:`~.preprocess.make_inputs`, :func:`~.preprocess.face_inputs`);
* :mod:`.predict`: :func:`~.predict.predict_faces`, the batch loop over (image, box) faces;
* :mod:`.detector`: the YuNet face detector and the detector box calibration;
* :mod:`.aligner`: :class:`~tcdcn_ext.Aligner`; :mod:`.results`: :class:`~.results.Face`, :class:`~.results.Attribute`;
* :mod:`.averaging` (TCDCN-Averaged), :mod:`.tracking` (videos), :mod:`.draw`, :mod:`.folder_align`.
"""
