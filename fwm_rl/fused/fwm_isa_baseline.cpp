// The FWM kernels of fwm_kernel.h and fwm_rank_one.h compiled for the x86-64 baseline (SSE2); fwm_fused.cpp picks them when torch's CPU capability is DEFAULT.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#define FWM_ISA baseline
#define FWM_VEC_BYTES 16
#include "fwm_kernel.h"
#include "fwm_rank_one.h"
