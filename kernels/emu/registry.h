// The kernel table shared by the generated per-file wrappers (build.rs) and runtime.cpp.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

struct LitEmuKernel {
    const char* name;
    void (*entry)(void** args);  // runs the kernel body for the current fiber
    unsigned nargs;
};

// Unpacks a cuLaunchKernel-style argument array: args[i] points at the i-th parameter's value.
template <class... A, std::size_t... I>
inline void lit_emu_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <class... A>
inline void lit_emu_unpack(void (*kernel)(A...), void** args) {
    lit_emu_call(kernel, args, std::index_sequence_for<A...>{});
}
template <class... A>
constexpr unsigned lit_emu_arity(void (*)(A...)) {
    return sizeof...(A);
}
