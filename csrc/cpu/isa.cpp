#include "cpu/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define TCDCN_X86 1
#else
#define TCDCN_X86 0
#endif

namespace tcdcn::cpu {
namespace {

#if TCDCN_X86
unsigned long long read_xcr0() {
  unsigned int eax = 0, edx = 0;
  // xgetbv(0): which register states the OS saves on context switch.
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

// Linux keeps the AMX tile data state off until a process asks for it: without the permission the first tile
// instruction faults (SIGILL). Elsewhere: no AMX path.
bool tile_permission() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

Isa detect() {
#if TCDCN_X86 && TCDCN_HAVE_X86_SIMD
  unsigned int a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::ref;
  const bool osxsave = c & (1u << 27);
  const bool fma = c & (1u << 12);
  const bool avx = c & (1u << 28);
  const bool f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return Isa::ref;
  const unsigned long long xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return Isa::ref;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::ref;
  const bool avx2 = b & (1u << 5);
  if (!avx2) return Isa::ref;
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;  // opmask, ZMM_Hi256, Hi16_ZMM (+ XMM, YMM)
  if (!(avx512f && avx512dq && avx512bw && avx512vl && zmm_state)) return Isa::avx2;
  const bool avx512vnni = c & (1u << 11);  // CPUID.(7,0):ECX[11]; its registers are the AVX-512 ones
  if (!avx512vnni) return Isa::avx512;
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);  // CPUID.(7,0):EDX
  unsigned int a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  const bool avx512bf16 = __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 & (1u << 5));
  const bool tile_state = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  if (amx_bf16 && amx_tile && avx512bf16 && tile_state && tile_permission()) return Isa::amx;
  return Isa::vnni;
#else
  return Isa::ref;
#endif
}

Isa from_env(Isa best) {
  const char* env = std::getenv("TCDCN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  Isa want;
  try {
    want = isa_from_name(env);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "tcdcn_ext: ignoring TCDCN_CPU_ISA: %s\n", e.what());
    return best;
  }
  if (static_cast<int>(want) > static_cast<int>(best)) {
    std::fprintf(stderr, "tcdcn_ext: TCDCN_CPU_ISA=%s is not supported by this CPU; using %s\n", env,
                 isa_name(best));
    return best;
  }
  return want;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(from_env(best_isa()))};
  return slot;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect();
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(best_isa()); ++i) out.push_back(static_cast<Isa>(i));
  return out;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa())) {
    throw std::invalid_argument(std::string("CPU ISA '") + isa_name(isa) + "' is not supported by this CPU (best: " +
                                isa_name(best_isa()) + ")");
  }
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::ref: return "ref";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::vnni: return "vnni";
    case Isa::amx: return "amx";
  }
  return "unknown";
}

Isa isa_from_name(const std::string& name) {
  if (name == "ref") return Isa::ref;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  if (name == "vnni") return Isa::vnni;
  if (name == "amx") return Isa::amx;
  throw std::invalid_argument("unknown CPU ISA '" + name + "'; expected one of: ref, avx2, avx512, vnni, amx");
}

}  // namespace tcdcn::cpu
