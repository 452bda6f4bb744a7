#include "cpu/huge_pages.h"

#include <ATen/ATen.h>

#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tcdcn::cpu {

at::Tensor empty_huge_pages(int64_t nbytes) {
  TORCH_CHECK(nbytes >= 0, "empty_huge_pages: nbytes must be >= 0, got ", nbytes);
#if defined(__linux__)
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t size = (size_t(nbytes) + kHuge - 1) / kHuge * kHuge;
  if (size > 0) {
    if (void* p = std::aligned_alloc(kHuge, size)) {
      madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
      return at::from_blob(p, {nbytes}, [](void* q) { std::free(q); }, at::TensorOptions().dtype(at::kByte));
    }
  }
#endif
  return at::empty({nbytes}, at::TensorOptions().dtype(at::kByte));
}

}  // namespace tcdcn::cpu
