// Every op of the CPU backend (backend/cpu/cpu_backend.h) through the one backend interface, against the plain
// references: the cpu:: kernels' references (matmul_reference, attention_reference, attention_scores_reference,
// dequantize_row) or the one-line definitions of backend.h as plain loops, each with its tolerance stated. Then the
// host KV page memory: write_rows, reads and compaction in every KvFormat against the inputs and the page codec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/kv_page_codec.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/fp16.h"

namespace longctx {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct Fixture : ::testing::Test {
  ThreadPool pool{2};
  std::unique_ptr<Backend> be = make_backend(Device::Cpu, pool);
};

using BackendOps = Fixture;

TEST_F(BackendOps, FactoryAndDevices) {
  EXPECT_STREQ(be->name(), "cpu");
  EXPECT_TRUE(be->host_memory());
  EXPECT_EQ(parse_device("cpu"), Device::Cpu);
  EXPECT_EQ(parse_device("cuda"), Device::Cuda);
  EXPECT_STREQ(device_name(Device::Cuda), "cuda");
  EXPECT_THROW(parse_device("tpu"), Error);
  EXPECT_TRUE(device_available(Device::Cpu));
  std::string why;
  if (!device_available(Device::Cuda, &why)) {
    EXPECT_NE(why.find("no CUDA backend"), std::string::npos) << why;
    EXPECT_THROW(make_backend(Device::Cuda, pool), Error);
  }
}

TEST_F(BackendOps, MemoryRoundTrip) {
  const std::vector<float> x = randn(1000, 1);
  Backend::Floats a = be->alloc_floats(x.size());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(a.get()[i], 0.0f);  // allocated zeroed
  be->to_backend(a.get(), x.data(), x.size() * sizeof(float));
  std::vector<float> y(x.size());
  be->to_host(y.data(), a.get(), y.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0);  // exact
}

TEST_F(BackendOps, PrepareChecksFormats) {
  std::vector<uint8_t> bytes(64 * 64 * 4);
  Weight ok{GgmlType::F32, bytes.data(), 64, 64};
  Weight bad{GgmlType::Q2_K, bytes.data(), 1, 256};
  std::vector<float> norm(64, 1.0f);
  EXPECT_NO_THROW(be->prepare({&ok}, {&norm}));
  EXPECT_THROW(be->prepare({&ok, &bad}, {}), Error);
}

// A Q8_0 matrix (n_out, n_in) of random codes and scales.
std::vector<uint8_t> random_q8_0(int64_t n_out, int64_t n_in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> w(static_cast<size_t>(n_out) * ggml_row_bytes(GgmlType::Q8_0, n_in));
  for (size_t b = 0; b < w.size(); b += 34) {
    const uint16_t d = f32_to_fp16(0.01f + 0.001f * static_cast<float>(rng() % 10));
    std::memcpy(&w[b], &d, 2);
    for (int i = 0; i < 32; ++i) w[b + 2 + i] = static_cast<uint8_t>(rng());
  }
  return w;
}

TEST_F(BackendOps, EmbedIsTheScaledDequantizedRow) {
  const int64_t V = 50, E = 64;
  const std::vector<uint8_t> table = random_q8_0(V, E, 2);
  const Weight w{GgmlType::Q8_0, table.data(), V, E};
  const int32_t tokens[] = {3, 0, 49, 3};
  const float scale = 1.5f;
  std::vector<float> x(4 * E), row(E);
  be->embed(w, tokens, 4, scale, x.data());
  for (int t = 0; t < 4; ++t) {
    cpu::dequantize_row(GgmlType::Q8_0, table.data() + tokens[t] * ggml_row_bytes(GgmlType::Q8_0, E), row.data(), E);
    for (int64_t i = 0; i < E; ++i) ASSERT_EQ(x[t * E + i], row[i] * scale);  // exact: one f32 product
  }
}

TEST_F(BackendOps, MatmulOfSeveralOutputsMatchesTheReference) {
  const int64_t n_in = 128;
  for (int32_t n : {1, 3, 16}) {
    const std::vector<float> x = randn(static_cast<size_t>(n) * n_in, 3);
    const std::vector<float> wf = randn(40 * n_in, 4, 0.1f);
    std::vector<uint16_t> wh(24 * n_in);
    for (size_t i = 0; i < wh.size(); ++i) wh[i] = f32_to_fp16(wf[i] * 0.5f);
    const std::vector<uint8_t> wq = random_q8_0(32, n_in, 5);
    const Weight a{GgmlType::F32, reinterpret_cast<const uint8_t*>(wf.data()), 40, n_in};
    const Weight b{GgmlType::F16, reinterpret_cast<const uint8_t*>(wh.data()), 24, n_in};
    const Weight c{GgmlType::Q8_0, wq.data(), 32, n_in};
    std::vector<float> ya(n * 40), yb(n * 24), yc(n * 32);
    const MatmulOutput outs[] = {{&a, ya.data()}, {&b, yb.data()}, {&c, yc.data()}};
    be->matmul(outs, 3, x.data(), n);
    for (const auto& [w, y] : {std::pair{&a, &ya}, std::pair{&b, &yb}, std::pair{&c, &yc}}) {
      std::vector<float> ref(y->size());
      cpu::matmul_reference(w->type, w->data, w->n_out, n_in, x.data(), n, ref.data());
      // Float weights: f32 products, sums in another order (1e-4 relative to the sum of |terms|, bounded here by
      // 1e-3 absolute). Q8_0: the activations rounded to 16 bits (matmul.h: each value off by max|x| / 2^16).
      const double tol = w->type == GgmlType::Q8_0 ? 2e-2 : 1e-3;
      for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR((*y)[i], ref[i], tol) << ggml_traits(w->type).name << " " << i;
    }
  }
  // One output is the kernel's single matmul, bit for bit.
  const std::vector<float> x = randn(5 * n_in, 6);
  const std::vector<uint8_t> wq = random_q8_0(32, n_in, 7);
  const Weight c{GgmlType::Q8_0, wq.data(), 32, n_in};
  std::vector<float> y(5 * 32), ref(y.size());
  const MatmulOutput out{&c, y.data()};
  be->matmul(&out, 1, x.data(), 5);
  cpu::matmul(pool, c.type, c.data, c.n_out, n_in, x.data(), 5, ref.data());
  EXPECT_EQ(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)), 0);
}

TEST_F(BackendOps, ElementWiseOpsMatchTheirDefinitions) {
  const int64_t rows = 3, dim = 96;
  const std::vector<float> x = randn(rows * dim, 8);
  const std::vector<float> w = randn(dim, 9);
  std::vector<float> y(x.size());
  be->rmsnorm(x.data(), w, y.data(), rows, dim, 1e-5f);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double s = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t i = 0; i < dim; ++i) ASSERT_NEAR(y[r * dim + i], x[r * dim + i] * s * w[i], 1e-5);  // f32 products
  }
  std::vector<float> z = x;  // in place
  be->rmsnorm(z.data(), w, z.data(), rows, dim, 1e-5f);
  EXPECT_EQ(z, y);

  const int32_t n = 3, heads = 2, hd = 16, n_rot = 12;
  const int32_t pos[] = {0, 7, 100000};
  for (RopeOrder order : {RopeOrder::Adjacent, RopeOrder::Halves}) {
    const std::vector<float> q = randn(n * heads * hd, 10);
    std::vector<float> r = q;
    be->rope(r.data(), pos, n, heads, hd, n_rot, 10000.0f, order);
    for (int32_t t = 0; t < n; ++t)
      for (int32_t h = 0; h < heads; ++h) {
        const float* a0 = q.data() + (t * heads + h) * hd;
        const float* a1 = r.data() + (t * heads + h) * hd;
        for (int32_t i = 0; i < n_rot / 2; ++i) {
          const int32_t a = order == RopeOrder::Adjacent ? 2 * i : i, b = order == RopeOrder::Adjacent ? 2 * i + 1 : i + n_rot / 2;
          const double th = pos[t] * std::pow(10000.0, -2.0 * i / n_rot);
          ASSERT_NEAR(a1[a], a0[a] * std::cos(th) - a0[b] * std::sin(th), 1e-5);  // f32 rotation of double angles
          ASSERT_NEAR(a1[b], a0[a] * std::sin(th) + a0[b] * std::cos(th), 1e-5);
        }
        for (int32_t i = n_rot; i < hd; ++i) ASSERT_EQ(a1[i], a0[i]);  // channels past n_rot untouched
      }
  }

  const std::vector<float> up = randn(257, 11), g0 = randn(257, 12, 3.0f);
  for (GatedActivation act : {GatedActivation::SiLU, GatedActivation::GeluTanh}) {
    std::vector<float> g = g0;
    be->gated_activation(g.data(), up.data(), static_cast<int64_t>(g.size()), act);
    for (size_t i = 0; i < g.size(); ++i) {
      const double v = g0[i];
      const double a = act == GatedActivation::SiLU
                           ? v / (1.0 + std::exp(-v))
                           : 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
      const double want = a * up[i];
      ASSERT_NEAR(g[i], want, 1e-5 + 1e-5 * std::fabs(want)) << i;  // vectorized exp/tanh: a few f32 ulps
    }
  }

  std::vector<float> s = x;
  be->add_in_place(s.data(), y.data(), static_cast<int64_t>(s.size()));
  for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s[i], x[i] + y[i]);  // exact: one f32 sum
}

// A layer of pages in mixed formats built with the page codec; slots hold positions with gaps (as after eviction).
struct Pages {
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::vector<int32_t>> positions;
  KvLayerView view;
};

Pages make_pages(int32_t n_kv, int32_t T, int32_t d, const std::vector<int32_t>& n_tokens, uint32_t seed) {
  Pages p;
  p.view.page_tokens = T;
  p.view.head_dim = d;
  p.positions.resize(static_cast<size_t>(n_kv));
  const KvFormat fmts[] = {KvFormat::Kivi4, KvFormat::F16, KvFormat::F32, KvFormat::Kivi8, KvFormat::F16};
  for (int32_t g = 0; g < n_kv; ++g) {
    KvHeadView hv;
    const int32_t n = n_tokens[static_cast<size_t>(g)];
    for (int32_t s = 0; s < n; ++s) p.positions[g].push_back(2 * s + (s > 5 ? 3 : 0));
    hv.slot0.push_back(0);
    int32_t s = 0, pi = 0;
    while (s < n) {
      KvFormat f = fmts[(pi + g) % 5];
      const int32_t rows = kv_format_is_packed(f) ? T : std::min(T - 1, n - s);
      if (kv_format_is_packed(f) && n - s < T) f = KvFormat::F16;
      const int32_t r = kv_format_is_packed(f) ? T : std::min(rows, n - s);
      const std::vector<float> k = randn(static_cast<size_t>(T) * d, seed++), v = randn(static_cast<size_t>(T) * d, seed++);
      p.bytes.emplace_back(kv_page_bytes(f, T, d));
      cpu::kv_page_write(f, T, d, k.data(), v.data(), 0, r, p.bytes.back().data());
      hv.formats.push_back(f);
      s += r;
      hv.slot0.push_back(s);
      ++pi;
    }
    p.view.heads.push_back(hv);
  }
  // Page addresses only once every page is in place (the vector of pages no longer moves).
  size_t b = 0;
  for (int32_t g = 0; g < n_kv; ++g) {
    KvHeadView& hv = p.view.heads[static_cast<size_t>(g)];
    for (size_t i = 0; i < hv.formats.size(); ++i) hv.pages.push_back(p.bytes[b++].data());
    hv.positions = p.positions[static_cast<size_t>(g)].data();
    hv.n_tokens = hv.slot0.back();
  }
  return p;
}

TEST_F(BackendOps, AttentionAndScoresMatchTheReferences) {
  const int32_t n_head = 4, n_kv = 2, d = 64, T = 16, n = 3;
  const Pages pages = make_pages(n_kv, T, d, {40, 23}, 20);
  const std::vector<float> q = randn(static_cast<size_t>(n) * n_head * d, 13);
  const int32_t q_pos[] = {30, 60, 90};
  for (int32_t window : {0, 20}) {
    AttentionParams ap{n_head, n_kv, d, 0.125f, window};
    std::vector<float> out(q.size()), ref(q.size());
    be->attention(ap, q.data(), q_pos, n, pages.view, out.data());
    cpu::attention_reference(ap, q.data(), q_pos, n, pages.view, ref.data());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-4) << i;  // f32 online softmax vs double
    for (ScoreReduce reduce : {ScoreReduce::Sum, ScoreReduce::Max}) {
      const int32_t stride = 48;
      std::vector<float> sc(n_kv * stride, 0.5f), sref = sc;  // accumulated into
      be->attention_scores(ap, q.data(), q_pos, n, 1, pages.view, sc.data(), stride, reduce);
      cpu::attention_scores_reference(ap, q.data(), q_pos, n, 1, pages.view, sref.data(), stride, reduce);
      for (size_t i = 0; i < sc.size(); ++i) ASSERT_NEAR(sc[i], sref[i], 1e-5) << i;  // probabilities, f32 vs double
    }
  }
}

// The host page memory in every format: rows written through write_rows (open formats) or a whole page
// (packed), read back against the input within the format's rounding and against the codec bit for bit, then
// compacted.
TEST(BackendOpsKvMemory, WriteReadCompactInEveryFormat) {
  KvPageMemory& mem = host_kv_memory();
  const int32_t T = 16, d = 64;
  for (KvFormat f : {KvFormat::F32, KvFormat::F16, KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2}) {
    SCOPED_TRACE(kv_format_name(f));
    const size_t pb = kv_page_bytes(f, T, d);
    uint8_t* slab = mem.map(2 * pb);
    ASSERT_NE(slab, nullptr);
    uint8_t* pages[2] = {slab, slab + pb};
    // Rows 2 * T of k and v, stride 3 * d (every third row of a larger tensor, as a layer's heads are).
    const int64_t stride = 3 * d;
    const std::vector<float> k = randn(static_cast<size_t>(T) * 2 * stride, 30), v = randn(k.size(), 31);
    std::vector<float> want_k(static_cast<size_t>(2) * T * d), want_v(want_k.size());  // (page, row, d)
    if (!kv_format_is_packed(f)) {
      // Rows go to both pages, interleaved and out of row order.
      std::vector<KvRowDest> dests(2 * T);
      for (int32_t i = 0; i < 2 * T; ++i) dests[i] = KvRowDest{pages[i % 2], T - 1 - i / 2};
      mem.write_rows(f, T, d, k.data(), v.data(), stride, dests.data(), 2 * T);
      for (int32_t i = 0; i < 2 * T; ++i) {
        const size_t at = (static_cast<size_t>(i % 2) * T + (T - 1 - i / 2)) * d;
        std::copy_n(k.data() + i * stride, d, want_k.data() + at);
        std::copy_n(v.data() + i * stride, d, want_v.data() + at);
      }
    } else {
      for (int32_t p = 0; p < 2; ++p) {
        std::vector<float> kp(static_cast<size_t>(T) * d), vp(kp.size());
        for (int32_t r = 0; r < T; ++r) {
          std::copy_n(k.data() + (p * T + r) * stride, d, kp.data() + r * d);
          std::copy_n(v.data() + (p * T + r) * stride, d, vp.data() + r * d);
        }
        mem.write_page_rows_host(f, T, d, kp.data(), vp.data(), 0, T, pages[p]);
        std::copy(kp.begin(), kp.end(), want_k.begin() + p * T * d);
        std::copy(vp.begin(), vp.end(), want_v.begin() + p * T * d);
      }
    }
    // Within the format's rounding: f32 exact, f16 half an ulp (2^-11 relative), KIVI half a step of its range
    // (|x| <= 5 here: range 10, step 10 / (2^bits - 1)).
    const double step = kv_format_is_packed(f) ? 10.0 / ((1 << kv_format_bits(f)) - 1) : 0;
    for (int32_t p = 0; p < 2; ++p) {
      std::vector<float> rk(static_cast<size_t>(T) * d), rv(rk.size()), ck(rk.size()), cv(rk.size());
      mem.read_keys_host(f, T, d, pages[p], 0, T, rk.data());
      mem.read_values_host(f, T, d, pages[p], 0, T, rv.data());
      cpu::kv_page_read_keys(f, T, d, pages[p], 0, T, ck.data());
      cpu::kv_page_read_values(f, T, d, pages[p], 0, T, cv.data());
      EXPECT_EQ(rk, ck);
      EXPECT_EQ(rv, cv);
      for (size_t i = 0; i < rk.size(); ++i) {
        const float wk = want_k[p * T * d + i], wv = want_v[p * T * d + i];
        const double tk = f == KvFormat::F32 ? 0 : f == KvFormat::F16 ? std::fabs(wk) / 2048 : step / 2 + 1e-3;
        const double tv = f == KvFormat::F32 ? 0 : f == KvFormat::F16 ? std::fabs(wv) / 2048 : step / 2 + 1e-3;
        ASSERT_NEAR(rk[i], wk, tk) << p << " " << i;
        ASSERT_NEAR(rv[i], wv, tv) << p << " " << i;
      }
      // A row in the middle reads alone as in the whole page.
      std::vector<float> one(d);
      mem.read_keys_host(f, T, d, pages[p], 5, 1, one.data());
      ASSERT_TRUE(std::equal(one.begin(), one.end(), rk.begin() + 5 * d));
      // Compaction keeps the chosen rows' decoded values exactly, in order, at the front; then again with one hole
      // (a decode step's eviction: the rows after it move up by one).
      std::vector<float> was_k = rk, was_v = rv;
      for (const std::vector<int32_t>& keep : {std::vector<int32_t>{0, 2, 3, 9, 15}, std::vector<int32_t>{0, 1, 3, 4}}) {
        mem.compact(f, T, d, pages[p], keep.data(), static_cast<int32_t>(keep.size()));
        std::vector<float> kk(keep.size() * d), kv(kk.size());
        mem.read_keys_host(f, T, d, pages[p], 0, static_cast<int32_t>(keep.size()), kk.data());
        mem.read_values_host(f, T, d, pages[p], 0, static_cast<int32_t>(keep.size()), kv.data());
        for (size_t j = 0; j < keep.size(); ++j)
          for (int32_t i = 0; i < d; ++i) {
            ASSERT_EQ(kk[j * d + i], was_k[keep[j] * d + i]) << j;
            ASSERT_EQ(kv[j * d + i], was_v[keep[j] * d + i]) << j;
          }
        was_k = kk;
        was_v = kv;
      }
    }
    // A page copied whole (copy on write of a shared page) holds the same bytes.
    mem.copy_page(pages[0], pages[1], pb);
    ASSERT_EQ(0, std::memcmp(pages[0], pages[1], pb));
    // Released memory reads as zeros; then the slab goes back.
    mem.release(slab, pb);
    for (size_t i = 0; i < pb; i += 97) ASSERT_EQ(slab[i], 0) << i;
    mem.unmap(slab, 2 * pb);
  }
}

}  // namespace
}  // namespace longctx
