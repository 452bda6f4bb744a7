#include "cpu/thread_team.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tcdcn::cpu {

int thread_team_size(int n) {
#ifdef _OPENMP
  const int previous = omp_get_max_threads();
  if (n > 0) omp_set_num_threads(n);
  return previous;
#else
  (void)n;
  return 1;
#endif
}

}  // namespace tcdcn::cpu
