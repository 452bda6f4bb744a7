// The calling thread's OpenMP team size (tcdcn_ext._C.thread_team_size; the face detector runs its ops on a thread
// count of its own, detect.py).
#pragma once

namespace tcdcn::cpu {

// The calling thread's OpenMP team size (the per-thread nthreads ICV that at::get_num_threads() reads with torch's
// OpenMP backend) set to n (n <= 0: left as it is); returns the previous value. Other threads keep theirs. Without
// OpenMP: 1, and nothing is set.
int thread_team_size(int n);

}  // namespace tcdcn::cpu
