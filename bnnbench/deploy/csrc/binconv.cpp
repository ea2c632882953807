// Bit-packed binary convolution (XNOR-popcount) for 1-bit inference on x86-64 CPUs.
//
// Operands (bnnbench/deploy/kernels.py packs them):
//   activations  uint64 [N, H, W, Wd]            bit j of word k = (x[n, 64k + j, h, w] < 0)
//   weights      uint64 [Ob, KH*KW, Wd, L]       bit j of word k = (W[o, 64k + j, ky, kx] < 0),
//                                                o = ob * L + lane (output channels padded to L = 32, or
//                                                L = 16 for a layer of at most 16: no half-empty block)
// A binary product is +1 when the two bits agree, -1 when they differ, so over the n valid input bits of
// one output position:   dot = n - 2 * popcount(a XOR w).
// Zero padding: a tap outside the input contributes 0 in the trained model (it pads after binarising),
// so taps outside the input are skipped and n counts only the taps inside: n = C_in * (valid taps).
// Channel padding bits are 0 in both operands: their XOR is 0 and they are not counted in n.
//
// Instruction sets, chosen at run time (isa argument or the CPU's features): AVX-512 (F, BW, VL) with VPOPCNTDQ
// (8 x 64-bit popcounts per instruction), AVX2 (nibble-table popcount, 4 x 64 bits), portable C++.
// Every path computes the same integers. Threads: ATen's intra-op pool (torch.set_num_threads; OpenMP).
// The ceiling of each path against FP32 on the same CPU: csrc/roofline.cpp (results/deploy/roofline.txt).
// A CUDA path would take the same packed operands and use __popcll per 64-bit word.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 32;       // most output channels per weight block (4 AVX-512 vectors of 8 x 64-bit);
constexpr int kSmallLanes = 16;  // a layer with at most 16 output channels packs blocks of 16 (Geometry::lanes)

struct Geometry {
  int64_t n, h, w, wd, c_in, c_out, kh, kw, stride, pad, oh, ow, blocks, lanes;
};

// What happens to the dot products of one output position (the fused binary block of
// bnnbench/deploy/fusion.py):  y[o] = act(scale[o] * dot[o] + bias[o] + residual[o]) + post[o],
// act: none (0), clamp to [lo, hi] (1: Hardtanh), PReLU with a per-channel slope (2); then, when
// `packed` is set, the sign bits of y (1 where y < 0) packed 64 to a word for the next binary conv.
// The unfused layer uses the first term alone (bias, residual, post, packed: null; act 0).
struct Epilogue {
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* residual = nullptr;  // [positions, c_out] (NHWC)
  int64_t act = 0;
  float lo = -1.f, hi = 1.f;
  const float* slope = nullptr;
  const float* post = nullptr;
  uint64_t* packed = nullptr;       // [positions, ceil(c_out / 64)]
  bool per_position() const { return residual || act || post || packed; }
};

// For output coordinate o (one axis): the range [lo, hi) of kernel taps that land inside the input.
inline void tap_range(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  int64_t first = o * stride - pad;
  lo = first < 0 ? -first : 0;
  hi = first + k > size ? size - first : k;
  if (hi < lo) hi = lo;
}

// The packed activation words under tap (ky, kx) of output (n, oy, ox), and the weight block of that tap.
inline const uint64_t* act_at(const Geometry& g, const uint64_t* act, int64_t n, int64_t oy, int64_t ox, int64_t ky,
                              int64_t kx) {
  return act + ((n * g.h + oy * g.stride - g.pad + ky) * g.w + ox * g.stride - g.pad + kx) * g.wd;
}

inline const uint64_t* wt_at(const Geometry& g, const uint64_t* wt, int64_t ob, int64_t ky, int64_t kx) {
  return wt + ((ob * g.kh * g.kw + ky * g.kw + kx) * g.wd) * g.lanes;
}

// Writes `count` consecutive output positions' lanes of one block: int32 dot products, or scale * dot (+ bias) as
// float (a product, then a sum: the build turns off FMA contraction, so every path rounds alike; |dot| < 2^31, so
// through int32 the float is the same). Loops over contiguous lanes from local pointers, so that they vectorise:
// compiled for AVX2 and for the baseline, chosen at load time.
__attribute__((target_clones("avx2", "default")))
void store(const Geometry& g, int64_t (*counts)[kLanes], int64_t count, int64_t nvalid, int64_t ob, const Epilogue& e,
           float* __restrict outf, int32_t* __restrict outi, int64_t pos) {
  const int64_t o0 = ob * g.lanes, on = std::min<int64_t>(g.lanes, g.c_out - o0), c = g.c_out;
  const int32_t n = static_cast<int32_t>(nvalid);
  const float* __restrict scale = e.scale ? e.scale + o0 : nullptr;
  const float* __restrict bias = e.bias ? e.bias + o0 : nullptr;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t* __restrict cp = counts[p];
    if (!outf) {
      int32_t* __restrict o = outi + (pos + p) * c + o0;
      for (int64_t l = 0; l < on; ++l) o[l] = n - 2 * static_cast<int32_t>(cp[l]);
      continue;
    }
    float* __restrict o = outf + (pos + p) * c + o0;
    if (bias)
      for (int64_t l = 0; l < on; ++l) o[l] = scale[l] * static_cast<float>(n - 2 * static_cast<int32_t>(cp[l])) + bias[l];
    else
      for (int64_t l = 0; l < on; ++l) o[l] = scale[l] * static_cast<float>(n - 2 * static_cast<int32_t>(cp[l]));
  }
}

// Sign packing of `pixels` rows of c floats into wd words each (one per instruction set; pack_kernel picks).
using PackFn = void (*)(const float*, uint64_t*, int64_t, int64_t, int64_t);
void pack_row_portable(const float* x, uint64_t* out, int64_t c, int64_t wd, int64_t pixels);

// The rest of the epilogue on `count` finished positions from `pos` (every output channel written; the row
// loops call it once per output row): residual, activation, post shift, then the packed signs. One loop per
// step, so that each vectorises; compiled for AVX-512 and for the baseline, chosen at load time (element-wise
// adds, compares and products round alike in both, so every ISA path gives the same floats).
__attribute__((target_clones("avx512f", "default")))
void finish_positions(const Geometry& g, const Epilogue& e, float* __restrict outf, int64_t pos, int64_t count,
                      PackFn pack) {
  // Local copies: read through `e` inside a loop, each value would be reloaded per element (a store to y
  // might alias it), which keeps the loops scalar (measured 4x slower).
  const int64_t c = g.c_out, act = e.act;
  const float lo = e.lo, hi = e.hi;
  const float* __restrict residual = e.residual;
  const float* __restrict slope = e.slope;
  const float* __restrict post = e.post;
  for (int64_t p = pos; p < pos + count; ++p) {
    float* __restrict y = outf + p * c;
    if (residual) {
      const float* __restrict r = residual + p * c;
      for (int64_t o = 0; o < c; ++o) y[o] += r[o];
    }
    if (act == 1) {
      for (int64_t o = 0; o < c; ++o) y[o] = std::min(std::max(y[o], lo), hi);
    } else if (act == 2) {
      for (int64_t o = 0; o < c; ++o) y[o] = y[o] > 0.f ? y[o] : slope[o] * y[o];
    }
    if (post)
      for (int64_t o = 0; o < c; ++o) y[o] += post[o];
  }
  if (e.packed) pack(outf + pos * c, e.packed + pos * ((c + 63) / 64), c, (c + 63) / 64, count);
}

// ---------------------------------------------------------------- portable --------------------------------
void conv_row_portable(const Geometry& g, const uint64_t* act, const uint64_t* wt, const Epilogue& e,
                       float* outf, int32_t* outi, int64_t row, int64_t ob0, int64_t ob1, bool finish) {
  int64_t n = row / g.oh, oy = row % g.oh, ylo, yhi;
  tap_range(oy, g.stride, g.pad, g.kh, g.h, ylo, yhi);
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    int64_t xlo, xhi;
    tap_range(ox, g.stride, g.pad, g.kw, g.w, xlo, xhi);
    int64_t nvalid = g.c_in * (yhi - ylo) * (xhi - xlo), pos = (n * g.oh + oy) * g.ow + ox;
    for (int64_t ob = ob0; ob < ob1; ++ob) {
      int64_t counts[kLanes] = {0};
      for (int64_t ky = ylo; ky < yhi; ++ky)
        for (int64_t kx = xlo; kx < xhi; ++kx) {
          const uint64_t* a = act_at(g, act, n, oy, ox, ky, kx);
          const uint64_t* w = wt_at(g, wt, ob, ky, kx);
          for (int64_t k = 0; k < g.wd; ++k)
            for (int64_t l = 0; l < g.lanes; ++l) counts[l] += __builtin_popcountll(a[k] ^ w[k * g.lanes + l]);
        }
      store(g, &counts, 1, nvalid, ob, e, outf, outi, pos);
    }
  }
  if (finish) finish_positions(g, e, outf, (n * g.oh + oy) * g.ow, g.ow, pack_row_portable);
}

void pack_row_portable(const float* x, uint64_t* out, int64_t c, int64_t wd, int64_t pixels) {
  for (int64_t p = 0; p < pixels; ++p)
    for (int64_t k = 0; k < wd; ++k) {
      uint64_t bits = 0;
      for (int64_t j = 0; j < 64 && 64 * k + j < c; ++j) bits |= static_cast<uint64_t>(x[p * c + 64 * k + j] < 0.f) << j;
      out[p * wd + k] = bits;
    }
}

// ---------------------------------------------------------------- AVX2 ------------------------------------
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")

// Sign bits of `pixels` rows of c floats: 8 per compare (vmovmskps), the ragged end of a row one at a time.
void pack_row_avx2(const float* x, uint64_t* out, int64_t c, int64_t wd, int64_t pixels) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t p = 0; p < pixels; ++p) {
    const float* xp = x + p * c;
    for (int64_t k = 0; k < wd; ++k) {
      uint64_t bits = 0;
      int64_t j = 0, end = std::min<int64_t>(64, c - 64 * k);
      for (; j + 8 <= end; j += 8)
        bits |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xp + 64 * k + j), zero,
                                                                        _CMP_LT_OQ))) << j;
      for (; j < end; ++j) bits |= static_cast<uint64_t>(xp[64 * k + j] < 0.f) << j;
      out[p * wd + k] = bits;
    }
  }
}

// block_avx2 and block_avx512 have the same loop shape; each lives in its own target region (a template
// shared by both would carry the target options of the place it is defined, not those of its intrinsics).
// The words under one kernel row's valid taps are contiguous in both operands (activations [.., W, Wd], weights
// [.., KW, Wd, L]), so each kernel row is one flat loop over (xhi - xlo) * Wd words from pointers advanced once
// per row: no per-tap addressing or loop.
//
// AVX2 has no vector popcount: the nibble table gives per-byte counts (at most 8 per word). Per word they are
// widened to 64-bit sums (vpsadbw) and added; with BYTES, for layers with many words per tap (Wd >= 4), they
// are summed as bytes over up to kByteWords words and widened once per run (measured on ResNet-18's layers:
// 3-7% faster at Wd >= 4, 13% slower at Wd = 1, where a run has only 9 words).
constexpr int64_t kByteWords = 31;  // 31 * 8 = 248: a byte count cannot overflow

template <int P, int L, bool BYTES>  // P output positions of one row sharing the same valid taps; L lanes per block
inline void block_avx2(const Geometry& g, const uint64_t* act, const uint64_t* wt, int64_t n, int64_t oy, int64_t ox,
                       int64_t ylo, int64_t yhi, int64_t xlo, int64_t xhi, int64_t ob, int64_t counts[][kLanes]) {
  constexpr int R = L / 4;
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const int64_t words = (xhi - xlo) * g.wd, step = g.stride * g.wd;
  const uint64_t* a = act_at(g, act, n, oy, ox, ylo, xlo);
  const uint64_t* w = wt_at(g, wt, ob, ylo, xlo);
  __m256i acc[P][R];  // 64-bit counts, or with BYTES byte counts since the last widening into `counts`
  auto zero = [&] {
    _Pragma("GCC unroll 8")
    for (int p = 0; p < P; ++p)
      _Pragma("GCC unroll 8")
      for (int r = 0; r < R; ++r) acc[p][r] = _mm256_setzero_si256();
  };
  auto widen = [&] {
    _Pragma("GCC unroll 8")
    for (int p = 0; p < P; ++p)
      _Pragma("GCC unroll 8")
      for (int r = 0; r < R; ++r) {
        __m256i* c = reinterpret_cast<__m256i*>(counts[p] + 4 * r);
        _mm256_storeu_si256(c, _mm256_add_epi64(_mm256_loadu_si256(c), _mm256_sad_epu8(acc[p][r], _mm256_setzero_si256())));
      }
  };
  zero();
  if constexpr (BYTES)
    for (int p = 0; p < P; ++p) std::memset(counts[p], 0, sizeof(int64_t) * L);
  int64_t pending = 0;  // BYTES: words summed as bytes since the last widening
  for (int64_t ky = ylo; ky < yhi; ++ky, a += g.w * g.wd, w += g.kw * g.wd * L)
    for (int64_t j0 = 0, j1; j0 < words; j0 = j1) {
      j1 = words;
      if constexpr (BYTES) {
        if (pending == kByteWords) { widen(); zero(); pending = 0; }
        j1 = std::min(words, j0 + kByteWords - pending);
        pending += j1 - j0;
      }
      for (int64_t j = j0; j < j1; ++j) {
        __m256i av[P];
        _Pragma("GCC unroll 8")
        for (int p = 0; p < P; ++p) av[p] = _mm256_set1_epi64x(static_cast<long long>(a[p * step + j]));
        _Pragma("GCC unroll 8")
        for (int r = 0; r < R; ++r) {
          __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * L + 4 * r));
          _Pragma("GCC unroll 8")
          for (int p = 0; p < P; ++p) {
            __m256i v = _mm256_xor_si256(av[p], wv);
            __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                                            _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
            if constexpr (BYTES) acc[p][r] = _mm256_add_epi8(acc[p][r], bytes);
            else acc[p][r] = _mm256_add_epi64(acc[p][r], _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
          }
        }
      }
    }
  if constexpr (BYTES) {
    widen();
  } else {
    _Pragma("GCC unroll 8")
    for (int p = 0; p < P; ++p)
      _Pragma("GCC unroll 8")
      for (int r = 0; r < R; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(counts[p] + 4 * r), acc[p][r]);
  }
}
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512 VPOPCNTDQ -----------------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")
template <int P, int L>
inline void block_avx512(const Geometry& g, const uint64_t* act, const uint64_t* wt, int64_t n, int64_t oy, int64_t ox,
                         int64_t ylo, int64_t yhi, int64_t xlo, int64_t xhi, int64_t ob, int64_t counts[][kLanes]) {
  constexpr int R = L / 8;
  const int64_t words = (xhi - xlo) * g.wd, step = g.stride * g.wd;
  const uint64_t* a = act_at(g, act, n, oy, ox, ylo, xlo);
  const uint64_t* w = wt_at(g, wt, ob, ylo, xlo);
  __m512i acc[P][R];
  _Pragma("GCC unroll 8")
  for (int p = 0; p < P; ++p)
    _Pragma("GCC unroll 8")
    for (int r = 0; r < R; ++r) acc[p][r] = _mm512_setzero_si512();
  for (int64_t ky = ylo; ky < yhi; ++ky, a += g.w * g.wd, w += g.kw * g.wd * L)
    for (int64_t j = 0; j < words; ++j) {
      __m512i av[P];
      _Pragma("GCC unroll 8")
      for (int p = 0; p < P; ++p) av[p] = _mm512_set1_epi64(static_cast<long long>(a[p * step + j]));
      _Pragma("GCC unroll 8")
      for (int r = 0; r < R; ++r) {
        __m512i wv = _mm512_loadu_si512(w + j * L + 8 * r);
        _Pragma("GCC unroll 8")
        for (int p = 0; p < P; ++p) acc[p][r] = _mm512_add_epi64(acc[p][r], _mm512_popcnt_epi64(_mm512_xor_si512(av[p], wv)));
      }
    }
  _Pragma("GCC unroll 8")
  for (int p = 0; p < P; ++p)
    _Pragma("GCC unroll 8")
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(counts[p] + 8 * r, acc[p][r]);
}

// The epilogue of one block for `count` positions: dot = nvalid - 2 * count, times the scale (+ bias), as float;
// 8 lanes per vector, the scale and bias loaded once per 8 lanes and the positions interleaved (one call per
// position was a chain of dependent steps that measured a quarter of a 64-channel layer's time).
void store_avx512(const Geometry& g, int64_t (*counts)[kLanes], int64_t count, int64_t nvalid, int64_t ob,
                  const Epilogue& e, float* __restrict outf, int32_t* outi, int64_t pos) {
  const int64_t o0 = ob * g.lanes, on = std::min<int64_t>(g.lanes, g.c_out - o0), c = g.c_out;
  if (!outf) return store(g, counts, count, nvalid, ob, e, outf, outi, pos);
  const float* __restrict scale = e.scale + o0;
  const float* __restrict bias = e.bias ? e.bias + o0 : nullptr;
  const __m512i n = _mm512_set1_epi64(nvalid);
  for (int64_t r = 0; r * 8 < on; ++r) {
    int64_t left = on - 8 * r;
    __mmask8 m = left >= 8 ? static_cast<__mmask8>(0xff) : static_cast<__mmask8>((1u << left) - 1);
    const __m256 sc = _mm256_maskz_loadu_ps(m, scale + 8 * r);
    const __m256 bi = bias ? _mm256_maskz_loadu_ps(m, bias + 8 * r) : _mm256_setzero_ps();
    for (int64_t p = 0; p < count; ++p) {
      __m512i cnt = _mm512_loadu_si512(counts[p] + 8 * r);
      __m512i dot = _mm512_sub_epi64(n, _mm512_add_epi64(cnt, cnt));
      __m256 v = _mm256_mul_ps(sc, _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(dot)));  // |dot| < 2^31: exact
      if (bias) v = _mm256_add_ps(v, bi);
      _mm256_mask_storeu_ps(outf + (pos + p) * c + o0 + 8 * r, m, v);
    }
  }
}

void pack_row_avx512(const float* x, uint64_t* out, int64_t c, int64_t wd, int64_t pixels) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = 0; p < pixels; ++p) {
    const float* xp = x + p * c;
    for (int64_t k = 0; k < wd; ++k) {
      uint64_t bits = 0;
      for (int q = 0; q < 4; ++q) {
        int64_t c0 = 64 * k + 16 * q;
        if (c0 >= c) break;
        __mmask16 valid = c - c0 >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (c - c0)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(valid, xp + c0);
        bits |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_LT_OQ)) << (16 * q);
      }
      out[p * wd + k] = bits;
    }
  }
}
#pragma GCC pop_options

// Output blocks [ob0, ob1) of one output row with a vector block kernel: runs of RUN positions whose taps are all
// inside the input go through the RUN-position kernel BR (each weight load feeds RUN popcounts), the rest one at
// a time; `finish`: then the rest of the epilogue on the row. RUN = 4 on both paths (on this project's AVX-512
// CPU, operands streamed from L1: 1.17-1.25 T binary MAC/s for RUN x lanes/8 of 1x4 to 8x2, i.e. the XOR,
// popcount and add bound it, not the loads; AVX2 at 1 and 2 measured no faster either).
template <void (*B1)(const Geometry&, const uint64_t*, const uint64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                     int64_t, int64_t, int64_t, int64_t (*)[kLanes]),
          void (*BR)(const Geometry&, const uint64_t*, const uint64_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                     int64_t, int64_t, int64_t, int64_t (*)[kLanes]),
          void (*Store)(const Geometry&, int64_t (*)[kLanes], int64_t, int64_t, int64_t, const Epilogue&, float*, int32_t*,
                        int64_t),
          PackFn Pack, int RUN>
void conv_row_vector(const Geometry& g, const uint64_t* act, const uint64_t* wt, const Epilogue& e,
                     float* outf, int32_t* outi, int64_t row, int64_t ob0, int64_t ob1, bool finish) {
  int64_t n = row / g.oh, oy = row % g.oh, ylo, yhi;
  tap_range(oy, g.stride, g.pad, g.kh, g.h, ylo, yhi);
  int64_t counts[RUN][kLanes];
  int64_t ox = 0;
  while (ox < g.ow) {
    int64_t xlo, xhi, xlor, xhir;
    tap_range(ox, g.stride, g.pad, g.kw, g.w, xlo, xhi);
    tap_range(ox + RUN - 1, g.stride, g.pad, g.kw, g.w, xlor, xhir);
    bool run = ox + RUN <= g.ow && xlo == 0 && xhi == g.kw && xlor == 0 && xhir == g.kw;
    int P = run ? RUN : 1;
    int64_t nvalid = g.c_in * (yhi - ylo) * (xhi - xlo);
    for (int64_t ob = ob0; ob < ob1; ++ob) {
      if (run) BR(g, act, wt, n, oy, ox, ylo, yhi, xlo, xhi, ob, counts);
      else B1(g, act, wt, n, oy, ox, ylo, yhi, xlo, xhi, ob, counts);
      Store(g, counts, P, nvalid, ob, e, outf, outi, (n * g.oh + oy) * g.ow + ox);
    }
    ox += P;
  }
  if (finish) finish_positions(g, e, outf, (n * g.oh + oy) * g.ow, g.ow, Pack);
}

enum class Isa { portable = 0, avx2 = 1, avx512 = 2 };

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vpopcntdq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2")) return Isa::avx2;
  return Isa::portable;
}

Isa resolve_isa(int64_t requested) {
  Isa best = best_isa();
  if (requested < 0) return best;
  TORCH_CHECK(requested <= static_cast<int64_t>(best), "binconv: instruction set ", requested,
              " is not supported by this CPU (best available: ", static_cast<int>(best), ")");
  return static_cast<Isa>(requested);
}

PackFn pack_kernel(Isa use) {
  return use == Isa::avx512 ? pack_row_avx512 : use == Isa::avx2 ? pack_row_avx2 : pack_row_portable;
}

}  // namespace

int64_t cpu_isa() { return static_cast<int64_t>(best_isa()); }

// x: float32 [N, C, H, W] in channels_last memory -> uint64 [N, H, W, ceil(C / 64)] sign bits (x < 0).
torch::Tensor pack_activations(torch::Tensor x, int64_t isa) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32, "pack_activations: expected a 4-d float32 tensor");
  TORCH_CHECK(x.is_contiguous(torch::MemoryFormat::ChannelsLast), "pack_activations: x must be channels_last");
  int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), wd = (c + 63) / 64;
  auto out = torch::empty({n, h, w, wd}, x.options().dtype(torch::kUInt64));
  const float* xp = x.data_ptr<float>();
  uint64_t* op = out.data_ptr<uint64_t>();
  const PackFn pack = pack_kernel(resolve_isa(isa));
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, w * c));  // >= 16k values per thread
  at::parallel_for(0, n * h, grain, [&](int64_t b, int64_t e) {
    pack(xp + b * w * c, op + b * w * wd, c, wd, (e - b) * w);
  });
  return out;
}

// The operands' geometry, checked: act packed activations [N, H, W, Wd], wt packed weights [Ob, KH*KW, Wd, 32].
Geometry geometry(const torch::Tensor& act, const torch::Tensor& wt, int64_t c_in, int64_t c_out, int64_t kh,
                  int64_t kw, int64_t stride, int64_t pad) {
  TORCH_CHECK(act.dim() == 4 && act.scalar_type() == torch::kUInt64 && act.is_contiguous(), "binconv2d: bad act");
  TORCH_CHECK(wt.dim() == 4 && wt.scalar_type() == torch::kUInt64 && wt.is_contiguous() &&
              (wt.size(3) == kLanes || wt.size(3) == kSmallLanes), "binconv2d: bad packed weights");
  TORCH_CHECK(stride >= 1 && pad >= 0, "binconv2d: stride must be >= 1 and padding >= 0");
  Geometry g{act.size(0), act.size(1), act.size(2), act.size(3), c_in, c_out, kh, kw, stride, pad,
             (act.size(1) + 2 * pad - kh) / stride + 1, (act.size(2) + 2 * pad - kw) / stride + 1, wt.size(0),
             wt.size(3)};
  TORCH_CHECK(g.wd == (c_in + 63) / 64 && wt.size(2) == g.wd && wt.size(1) == kh * kw &&
              g.blocks == (c_out + g.lanes - 1) / g.lanes, "binconv2d: operand shapes do not match");
  TORCH_CHECK(g.oh > 0 && g.ow > 0, "binconv2d: the input is smaller than the kernel");
  return g;
}

// A float32 vector of one value per output channel (empty: absent).
const float* per_channel(const torch::Tensor& t, int64_t c_out, const char* what) {
  if (t.numel() == 0) return nullptr;
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.numel() == c_out && t.is_contiguous(), "binconv2d: ", what,
              " must be float32 with one value per output channel (", c_out, "), got ", t.numel());
  return t.data_ptr<float>();
}

// Every output row through the chosen instruction set, shared out over ATen's OpenMP threads (the build passes
// -fopenmp: without it at::parallel_for runs on one thread) in chunks of at least kMinRowWork word x block x
// tap steps, about 1 us, so that a small layer is not split finer than a thread's start-up. When the rows do not
// divide evenly among few threads (ResNet-18's layer4 at batch 1: 7 rows on 2 threads), each row's output-channel
// blocks are split in `parts` too, and the rest of the epilogue (which needs every channel of a position) runs
// after all of them, per row.
constexpr int64_t kMinRowWork = 512;

using RowFn = void (*)(const Geometry&, const uint64_t*, const uint64_t*, const Epilogue&, float*, int32_t*, int64_t,
                       int64_t, int64_t, bool);

RowFn row_kernel(const Geometry& g, Isa use) {
  if (use == Isa::avx512 && g.lanes == kSmallLanes)
    return conv_row_vector<block_avx512<1, kSmallLanes>, block_avx512<4, kSmallLanes>, store_avx512, pack_row_avx512,
                           4>;
  if (use == Isa::avx512)
    return conv_row_vector<block_avx512<1, kLanes>, block_avx512<4, kLanes>, store_avx512, pack_row_avx512, 4>;
  if (use == Isa::avx2 && g.lanes == kSmallLanes)
    return conv_row_vector<block_avx2<1, kSmallLanes, false>, block_avx2<4, kSmallLanes, false>, store, pack_row_avx2,
                           4>;
  if (use == Isa::avx2 && g.wd >= 4)
    return conv_row_vector<block_avx2<1, kLanes, true>, block_avx2<4, kLanes, true>, store, pack_row_avx2, 4>;
  if (use == Isa::avx2)
    return conv_row_vector<block_avx2<1, kLanes, false>, block_avx2<4, kLanes, false>, store, pack_row_avx2, 4>;
  return conv_row_portable;
}

void run_rows(const Geometry& g, const uint64_t* ap, const uint64_t* wp, const Epilogue& e, float* of, int32_t* oi,
              Isa use) {
  const RowFn conv_row = row_kernel(g, use);
  const int64_t rows = g.n * g.oh, threads = at::get_num_threads();
  const int64_t parts = rows % threads != 0 && rows < 8 * threads ? std::min(g.blocks, threads) : 1;
  const int64_t per_part = (g.blocks + parts - 1) / parts;
  const bool finish = of && e.per_position();
  const int64_t work = g.ow * per_part * g.kh * g.kw * g.wd;
  at::parallel_for(0, rows * parts, std::max<int64_t>(1, kMinRowWork / std::max<int64_t>(1, work)),
                   [&](int64_t b, int64_t end) {
    for (int64_t item = b; item < end; ++item) {
      int64_t row = item / parts, ob0 = item % parts * per_part, ob1 = std::min(g.blocks, ob0 + per_part);
      conv_row(g, ap, wp, e, of, oi, row, ob0, ob1, finish && parts == 1);
    }
  });
  if (finish && parts > 1) {
    const PackFn pack = pack_kernel(use);
    at::parallel_for(0, rows, 1, [&](int64_t b, int64_t end) { finish_positions(g, e, of, b * g.ow, (end - b) * g.ow, pack); });
  }
}

// act: packed activations, wt: packed weights [Ob, KH*KW, Wd, 32]; returns [N, OH, OW, C_out] float32
// (scale given: scale[o] * dot) or int32 (scale empty: the dot products themselves).
torch::Tensor binconv2d(torch::Tensor act, torch::Tensor wt, torch::Tensor scale, int64_t c_in, int64_t c_out,
                        int64_t kh, int64_t kw, int64_t stride, int64_t pad, int64_t isa) {
  Geometry g = geometry(act, wt, c_in, c_out, kh, kw, stride, pad);
  Epilogue e;
  e.scale = per_channel(scale, c_out, "scale");
  auto out = torch::empty({g.n, g.oh, g.ow, c_out}, act.options().dtype(e.scale ? torch::kFloat32 : torch::kInt32));
  run_rows(g, act.data_ptr<uint64_t>(), wt.data_ptr<uint64_t>(), e, e.scale ? out.data_ptr<float>() : nullptr,
           e.scale ? nullptr : out.data_ptr<int32_t>(), resolve_isa(isa));
  return out;
}

// The fused binary block (see Epilogue): returns [y float32 [N, OH, OW, C_out], packed signs of y
// uint64 [N, OH, OW, ceil(C_out / 64)] (empty unless emit_packed)]. residual: float32 NHWC of y's shape or empty;
// bias, slope, post: float32 (C_out,) or empty; act: 0 none, 1 clamp [lo, hi], 2 PReLU (slope required).
std::vector<torch::Tensor> binconv2d_fused(torch::Tensor act, torch::Tensor wt, torch::Tensor scale,
                                           torch::Tensor bias, torch::Tensor residual, int64_t activation, double lo,
                                           double hi, torch::Tensor slope, torch::Tensor post, bool emit_packed,
                                           int64_t c_in, int64_t c_out, int64_t kh, int64_t kw, int64_t stride,
                                           int64_t pad, int64_t isa) {
  Geometry g = geometry(act, wt, c_in, c_out, kh, kw, stride, pad);
  TORCH_CHECK(activation >= 0 && activation <= 2, "binconv2d_fused: activation ", activation,
              " is not one of 0 (none), 1 (clamp), 2 (PReLU)");
  Epilogue e;
  e.scale = per_channel(scale, c_out, "scale");
  TORCH_CHECK(e.scale, "binconv2d_fused: the scale is required");
  e.bias = per_channel(bias, c_out, "bias");
  e.slope = per_channel(slope, c_out, "slope");
  e.post = per_channel(post, c_out, "post");
  TORCH_CHECK(activation != 2 || e.slope, "binconv2d_fused: PReLU needs its slope");
  e.act = activation;
  e.lo = static_cast<float>(lo);
  e.hi = static_cast<float>(hi);
  auto out = torch::empty({g.n, g.oh, g.ow, c_out}, act.options().dtype(torch::kFloat32));
  if (residual.numel() > 0) {
    TORCH_CHECK(residual.scalar_type() == torch::kFloat32 && residual.dim() == 4 && residual.size(0) == g.n &&
                residual.size(1) == g.oh && residual.size(2) == g.ow && residual.size(3) == c_out &&
                residual.is_contiguous(), "binconv2d_fused: the residual must be float32 NHWC of the output's shape ",
                out.sizes(), ", got ", residual.sizes());
    e.residual = residual.data_ptr<float>();
  }
  torch::Tensor packed = torch::empty({emit_packed ? g.n : 0, g.oh, g.ow, (c_out + 63) / 64},
                                      act.options().dtype(torch::kUInt64));
  if (emit_packed) e.packed = packed.data_ptr<uint64_t>();
  run_rows(g, act.data_ptr<uint64_t>(), wt.data_ptr<uint64_t>(), e, out.data_ptr<float>(), nullptr, resolve_isa(isa));
  return {out, packed};
}

// pack_activations then binconv2d in one call (the deployed layer's forward: one crossing from Python).
torch::Tensor binconv2d_float(torch::Tensor x, torch::Tensor wt, torch::Tensor scale, int64_t c_in, int64_t c_out,
                              int64_t kh, int64_t kw, int64_t stride, int64_t pad, int64_t isa) {
  TORCH_CHECK(x.size(1) == c_in, "binconv2d_float: the input has ", x.size(1), " channels, the layer ", c_in);
  return binconv2d(pack_activations(x, isa), wt, scale, c_in, c_out, kh, kw, stride, pad, isa);
}

// The same functions as torch operators (torch.ops.bnnbench.*): a traced graph (bnnbench/deploy/fusion.py,
// traced) calls them without a Python frame per layer.
TORCH_LIBRARY(bnnbench, m) {
  m.def("pack_activations(Tensor x, int isa) -> Tensor");
  m.def("binconv2d_fused(Tensor act, Tensor wt, Tensor scale, Tensor bias, Tensor residual, int activation, "
        "float lo, float hi, Tensor slope, Tensor post, bool emit_packed, int c_in, int c_out, int kh, int kw, "
        "int stride, int pad, int isa) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(bnnbench, CPU, m) {
  m.impl("pack_activations", &pack_activations);
  m.impl("binconv2d_fused", &binconv2d_fused);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", &cpu_isa, "best instruction set of this CPU: 0 portable, 1 AVX2, 2 AVX-512 VPOPCNTDQ");
  m.def("pack_activations", &pack_activations, "sign bits of a channels_last float32 tensor, packed along C");
  m.def("binconv2d", &binconv2d, "XNOR-popcount convolution on packed operands");
  m.def("binconv2d_float", &binconv2d_float, "sign-pack a channels_last float32 input, then binconv2d");
  m.def("binconv2d_fused", &binconv2d_fused, "binconv2d with the fused block's epilogue and packed output");
}
