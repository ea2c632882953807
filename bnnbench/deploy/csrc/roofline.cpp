// The arithmetic ceiling of 1-bit inference on this CPU, one thread: how many binary multiply-accumulates per
// second the kernels' inner step can reach (XOR of packed words, popcount, add; operands streamed from L1 as in
// csrc/binconv.cpp: one activation word broadcast to 4 positions, 4 weight vectors of 8 lanes) against FP32
// multiply-accumulates (FMA on registers, 16 or 12 independent accumulators). Their ratio bounds any binary
// conv's speed-up over an FP32 conv that runs at the FMA peak (oneDNN's 3x3 convs come close). Paths the CPU
// lacks are skipped. Build and run (results/deploy/COMMAND.sh does):
//   g++ -O2 -Wno-uninitialized -o roofline bnnbench/deploy/csrc/roofline.cpp && ./roofline
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

template <class F> double best_seconds(F f) {  // fastest of 5: the least disturbed by other work
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

constexpr int P = 4, R = 4;       // positions x weight vectors per step, as the kernels' 4-position runs
constexpr long K = 64;            // words per pass (activations 4 x 64 words, weights 64 x 4 vectors: L1)

__attribute__((target("avx512f,avx512vpopcntdq"), noinline))
uint64_t binary_avx512(const uint64_t* act, const uint64_t* wt, long reps) {
  __m512i acc[P][R];
  for (auto& row : acc) for (auto& v : row) v = _mm512_setzero_si512();
  for (long rep = 0; rep < reps; ++rep)
    for (long k = 0; k < K; ++k) {
      __m512i a[P];
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) a[p] = _mm512_set1_epi64(static_cast<long long>(act[p * K + k]));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m512i w = _mm512_loadu_si512(wt + (k * R + r) * 8);
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) acc[p][r] = _mm512_add_epi64(acc[p][r], _mm512_popcnt_epi64(_mm512_xor_si512(a[p], w)));
      }
    }
  __m512i s = _mm512_setzero_si512();
  for (auto& row : acc) for (auto& v : row) s = _mm512_add_epi64(s, v);
  return _mm512_reduce_add_epi64(s);
}

__attribute__((target("avx2"), noinline))
uint64_t binary_avx2(const uint64_t* act, const uint64_t* wt, long reps) {  // nibble-table popcount, as binconv.cpp
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i acc[R];  // 1 position x 4 vectors of 4 lanes: more accumulators spill (16 ymm registers)
  for (auto& v : acc) v = _mm256_setzero_si256();
  for (long rep = 0; rep < reps; ++rep)
    for (long k = 0; k < K; ++k) {
      __m256i a = _mm256_set1_epi64x(static_cast<long long>(act[k]));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i v = _mm256_xor_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + (k * R + r) * 4)));
        __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                                        _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
        acc[r] = _mm256_add_epi64(acc[r], _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
      }
    }
  __m256i s = _mm256_setzero_si256();
  for (auto& v : acc) s = _mm256_add_epi64(s, v);
  return static_cast<uint64_t>(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
                               _mm256_extract_epi64(s, 3));
}

__attribute__((target("avx512f"), noinline)) float fma_avx512(const float* x, long iters) {
  __m512 acc[16];
  const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(x[0]);
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
  __m512 s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"), noinline)) float fma_avx2(const float* x, long iters) {
  __m256 acc[12];
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(x[0]);
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], b, c);
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

}  // namespace

int main() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  std::vector<uint64_t> act(P * K), wt(K * R * 8);
  for (size_t i = 0; i < act.size(); ++i) act[i] = 0x9e3779b97f4a7c15ULL * (i + 1);
  for (size_t i = 0; i < wt.size(); ++i) wt[i] = 0xc2b2ae3d27d4eb4fULL * (i + 7);
  std::vector<float> x(32, 1.0f);
  volatile uint64_t sink = 0;
  volatile float fsink = 0;
  const long reps = 100000, iters = 20000000;
  double fma512 = 0, fma256 = 0;
  std::printf("one thread, G multiply-accumulates per second (fastest of 5 runs)\n");
  if (avx512) {
    fma512 = 16.0 * 16 * iters / best_seconds([&] { fsink = fsink + fma_avx512(x.data(), iters); }) / 1e9;
    std::printf("  FP32 FMA, zmm (16 lanes):                        %8.1f\n", fma512);
  }
  if (avx2) {
    fma256 = 12.0 * 8 * iters / best_seconds([&] { fsink = fsink + fma_avx2(x.data(), iters); }) / 1e9;
    std::printf("  FP32 FMA, ymm (8 lanes):                         %8.1f\n", fma256);
  }
  const double fma = std::max(fma512, fma256);
  if (avx512) {
    double b = 1.0 * P * R * 512 * K * reps / best_seconds([&] { sink = sink + binary_avx512(act.data(), wt.data(), reps); }) / 1e9;
    std::printf("  binary, AVX-512 XOR + VPOPCNTQ + add:            %8.0f  (ceiling: %.1fx the FP32 FMA peak)\n", b, b / fma);
  }
  if (avx2) {
    double b = 1.0 * R * 256 * K * reps / best_seconds([&] { sink = sink + binary_avx2(act.data(), wt.data(), reps); }) / 1e9;
    std::printf("  binary, AVX2 XOR + nibble-table popcount + add:  %8.0f  (ceiling: %.1fx the FP32 FMA peak)\n", b, b / fma);
  }
  return 0;
}
