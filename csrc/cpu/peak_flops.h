// Arithmetic ceiling of one core on the active CPU path (tcdcn_ext._C.fma_peak_gflops).
#pragma once

namespace tcdcn::cpu {

// fp32 GFLOP/s of independent vector FMA chains on the calling thread, measured for about `seconds`.
double fma_peak_gflops(double seconds);

}  // namespace tcdcn::cpu
