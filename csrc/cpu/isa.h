// CPU instruction-set selection for the tcdcn_ext kernels: detected once with cpuid + xgetbv, cached,
// overridable with TCDCN_CPU_ISA=ref|avx2|avx512|vnni|amx (and from Python via tcdcn_ext.ops.set_cpu_isa for
// tests). Each path needs every one before it: vnni is avx512 plus AVX512_VNNI (the int8-weight kernels,
// lc_int8.h); amx is vnni plus AVX512_BF16, AMX-TILE and AMX-BF16 with the OS's tile state and this process's
// permission to use it (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once at detection): batched int8-weight layers on
// bf16 tiles (lc_amx.h). The float kernels of both are the avx512 ones.
#pragma once

#include <string>
#include <vector>

namespace tcdcn::cpu {

enum class Isa : int { ref = 0, avx2 = 1, avx512 = 2, vnni = 3, amx = 4 };

// Best path this host (CPU and OS register state) can run; computed once.
Isa best_isa();
// Every path this host can run, ascending.
std::vector<Isa> supported_isas();
// The path the kernels use now: TCDCN_CPU_ISA if set (clamped to what the host supports, with a warning),
// otherwise best_isa().
Isa active_isa();
// Force a path; throws std::invalid_argument if this host cannot run it.
void set_isa(Isa isa);

const char* isa_name(Isa isa);
// Throws std::invalid_argument naming the accepted values.
Isa isa_from_name(const std::string& name);

}  // namespace tcdcn::cpu
