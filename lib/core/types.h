#pragma once
// Basic types shared by every module: 64-byte aligned float buffers for SIMD kernels.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

namespace kvsim {

using i64 = std::int64_t;

template <class T, std::size_t Align = 64>
struct AlignedAllocator {
  using value_type = T;
  template <class U> struct rebind { using other = AlignedAllocator<U, Align>; };
  AlignedAllocator() noexcept = default;
  template <class U> AlignedAllocator(const AlignedAllocator<U, Align>&) noexcept {}
  T* allocate(std::size_t n) {
    std::size_t bytes = (n * sizeof(T) + Align - 1) / Align * Align;
    void* p = std::aligned_alloc(Align, bytes == 0 ? Align : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U> bool operator==(const AlignedAllocator<U, Align>&) const noexcept { return true; }
};

// Aligned vector: the storage type of every tensor in kvsim.
template <class T> using avec = std::vector<T, AlignedAllocator<T>>;

}  // namespace kvsim
