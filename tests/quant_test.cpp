// dequantize_row against golden vectors from gguf-py's numpy dequantizers (scripts/gen_quant_goldens.py).
//
// Tolerance: exact. Both sides evaluate the same f32 expression in the same order (fp16 -> f32 is exact, the
// integers are exact in f32, each IEEE operation is correctly rounded), and every product that feeds an addition
// is exact (see quant.cpp), so FMA contraction cannot move a result either. The one licence taken is -0 == +0.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "backend/cpu/quant.h"
#include "core/error.h"
#include "test_models.h"

namespace longctx {
namespace {

struct Golden {
  uint32_t type_id = 0, n_blocks = 0, block_values = 0, block_bytes = 0, n_real = 0;
  std::vector<uint8_t> bytes;  // (n_blocks, block_bytes)
  std::vector<float> values;   // (n_blocks, block_values)
};

// Layout written by gen_quant_goldens.py: "LCQG", u32 version, type, n_blocks, block_values, block_bytes, n_real,
// the blocks, then the f32 values.
Golden load_golden(const std::string& name) {
  const std::string path = test::golden_dir() + "/quant/" + name + ".bin";
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("missing golden {}: run scripts/gen_quant_goldens.py", path);
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Golden g;
  uint32_t hdr[6];
  if (raw.size() < 28 || std::memcmp(raw.data(), "LCQG", 4) != 0) fail("{}: not a quant golden", path);
  std::memcpy(hdr, raw.data() + 4, sizeof(hdr));
  if (hdr[0] != 1) fail("{}: version {}", path, hdr[0]);
  g.type_id = hdr[1], g.n_blocks = hdr[2], g.block_values = hdr[3], g.block_bytes = hdr[4], g.n_real = hdr[5];
  const size_t n_bytes = size_t{g.n_blocks} * g.block_bytes, n_values = size_t{g.n_blocks} * g.block_values;
  if (raw.size() != 28 + n_bytes + 4 * n_values) fail("{}: size {} does not match its header", path, raw.size());
  g.bytes.assign(raw.begin() + 28, raw.begin() + 28 + static_cast<ptrdiff_t>(n_bytes));
  g.values.resize(n_values);
  std::memcpy(g.values.data(), raw.data() + 28 + n_bytes, 4 * n_values);
  return g;
}

class QuantGolden : public ::testing::TestWithParam<GgmlType> {};

TEST_P(QuantGolden, MatchesGgufPy) {
  const GgmlType t = GetParam();
  const auto tr = ggml_traits(t);
  const Golden g = load_golden(std::string(tr.name));
  ASSERT_EQ(g.type_id, static_cast<uint32_t>(t));
  ASSERT_EQ(g.block_values, tr.block_values);
  ASSERT_EQ(g.block_bytes, tr.block_bytes);
  // Dequantize as one row (what matmul and the embedding lookup do) and block by block (a row offset).
  const int64_t n = static_cast<int64_t>(g.values.size());
  std::vector<float> row(n), one(tr.block_values);
  cpu::dequantize_row(t, g.bytes.data(), row.data(), n);
  int n_bad = 0;
  for (uint32_t b = 0; b < g.n_blocks; ++b) {
    cpu::dequantize_row(t, g.bytes.data() + size_t{b} * tr.block_bytes, one.data(), tr.block_values);
    for (int64_t i = 0; i < tr.block_values; ++i) {
      const size_t k = size_t{b} * tr.block_values + i;
      const float want = g.values[k];
      const bool same = (want == row[k] && want == one[i]) ||
                        (std::isnan(want) && std::isnan(row[k]) && std::isnan(one[i]));
      if (!same && ++n_bad <= 5)
        ADD_FAILURE() << tr.name << " block " << b << (b >= g.n_blocks - g.n_real ? " (real)" : " (random)")
                      << " value " << i << ": want " << want << " got " << row[k] << " / " << one[i];
    }
  }
  EXPECT_EQ(n_bad, 0);
  std::printf("%-5s %3u blocks (%u from the models) equal to gguf-py\n", std::string(tr.name).c_str(),
              g.n_blocks, g.n_real);
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantGolden,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0,
                                           GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                                           GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K),
                         [](const auto& info) { return std::string(ggml_traits(info.param).name); });

// The models' formats must come with real blocks, else the goldens were made without the model files.
TEST(QuantGolden, RealBlocksPresent) {
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    EXPECT_GT(load_golden(std::string(ggml_traits(t).name)).n_real, 0u) << ggml_traits(t).name;
  }
}

TEST(Quant, RejectsBadInput) {
  std::vector<uint8_t> buf(1024);
  std::vector<float> out(512);
  EXPECT_THROW(cpu::dequantize_row(GgmlType::Q4_K, buf.data(), out.data(), 32), Error);  // not whole blocks
  EXPECT_THROW(cpu::dequantize_row(GgmlType::Q8_1, buf.data(), out.data(), 32), Error);  // unsupported
  EXPECT_FALSE(cpu::quant_supported(GgmlType::Q2_K));
  EXPECT_TRUE(cpu::quant_supported(GgmlType::Q6_K));
}

}  // namespace
}  // namespace longctx
