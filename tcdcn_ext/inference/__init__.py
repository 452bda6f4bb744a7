"""Landmarks on images: image loading and preprocessing, the face detector, the :class:`~tcdcn_ext.Aligner` and
its result types, tracking, TCDCN-Averaged, drawing, and aligning a folder. Depends on :mod:`tcdcn_ext.models`,
:mod:`tcdcn_ext.ops` and :mod:`tcdcn_ext.util`."""
