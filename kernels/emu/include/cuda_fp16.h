// Stub for the emu device: the types live in kernels/emu/cuda_emu.h (always included first).
#pragma once
#include "../cuda_emu.h"
