"""The networks: TCDCN (its layer description, the module, the native inference plan, weights I/O, the CUDA graph,
export) and the YuNet face detector. Depends on :mod:`tcdcn_ext.ops` and :mod:`tcdcn_ext.util`; torch only (no
OpenCV).

* :mod:`.layers`: the one description of the network (a typed list of layers) and :class:`Epilogue`;
* :mod:`.tcdcn`: :class:`TCDCNConfig` and :class:`TCDCN`, the training modules built from the description;
* :mod:`.plan`: the description with the weights compiled into one native call (CPU inference);
* :mod:`.weights`: shipped weights, :func:`load_model`, :func:`save_weights`;
* :mod:`.cuda_graph`: :class:`CudaGraphForward`;
* :mod:`.export`: ONNX and torch.export programs (imported on use);
* :mod:`.yunet`: the YuNet face detector network (imported on use).
"""

from .cuda_graph import CudaGraphForward
from .layers import Epilogue, Layer, describe
from .tcdcn import AUX_TASKS_5PT, TCDCN, InferenceWeights, TCDCNConfig
from .weights import WeightsError, load_model, save_weights, shipped_models

__all__ = ["AUX_TASKS_5PT", "CudaGraphForward", "Epilogue", "InferenceWeights", "Layer", "TCDCN", "TCDCNConfig",
           "WeightsError", "describe", "load_model", "save_weights", "shipped_models"]
