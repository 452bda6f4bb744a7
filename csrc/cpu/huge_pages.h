// Buffers on transparent huge pages (tcdcn_ext._C.empty_huge_pages): TCDCN's inference plan (model.py) keeps its
// weights in one, so that their ~1700 4 KiB pages do not evict the TLB's entries for everything else.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tcdcn::cpu {

// Uninitialised uint8 CPU tensor of nbytes on 2 MiB-aligned memory advised as transparent huge pages (Linux;
// elsewhere, or if that allocation fails, an ordinary one).
at::Tensor empty_huge_pages(int64_t nbytes);

}  // namespace tcdcn::cpu
