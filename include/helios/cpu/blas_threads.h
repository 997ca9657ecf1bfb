#pragma once

namespace helios::cpu {

// Gives the BLAS library libtorch calls (OpenBLAS, found at run time) as many threads as
// ATen's intra-op pool, unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS says otherwise. Left at
// its default, OpenBLAS starts a worker per core, and after every call its workers spin
// (sched_yield) for a while on the cores the serving threads need. Returns the thread count
// set, or 0 when nothing was changed (no OpenBLAS, or the environment decides).
int match_blas_threads();

}  // namespace helios::cpu
