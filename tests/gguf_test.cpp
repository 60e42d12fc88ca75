// GGUF reader: round trips through a small writer kept here (every metadata type, tensor infos, v2 and v3,
// custom alignments), bad input (each fault must raise longctx::Error with a clear message, never crash), what
// parsing may cost in memory, the model loader's checks on what it reads before sizing anything by it, and a few
// known facts of the real SmolLM2 file.
#include "gguf/gguf.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "model/model.h"
#include "test_models.h"

// Bytes handed out by operator new on this thread while t_new_bytes is set, freed or not: how the tests below
// bound what parsing costs against the size of the file.
namespace {
thread_local size_t* t_new_bytes = nullptr;
}  // namespace

// Not inlined: GCC would otherwise pair the library's operator new or delete with malloc or free and warn.
__attribute__((noinline)) void* operator new(std::size_t n) {
  if (t_new_bytes) *t_new_bytes += n;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace longctx::gguf {
namespace {

// A little-endian byte buffer.
struct Bytes {
  std::vector<uint8_t> b;

  template <typename T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& type(ValueType t) { return put(static_cast<uint32_t>(t)); }
  Bytes& str(std::string_view s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& append(const Bytes& o) {
    b.insert(b.end(), o.b.begin(), o.b.end());
    return *this;
  }
};

// How a value type is written; the scalar C type of each.
template <typename T>
constexpr ValueType value_type_of() {
  if constexpr (std::is_same_v<T, uint8_t>) return ValueType::U8;
  if constexpr (std::is_same_v<T, int8_t>) return ValueType::I8;
  if constexpr (std::is_same_v<T, uint16_t>) return ValueType::U16;
  if constexpr (std::is_same_v<T, int16_t>) return ValueType::I16;
  if constexpr (std::is_same_v<T, uint32_t>) return ValueType::U32;
  if constexpr (std::is_same_v<T, int32_t>) return ValueType::I32;
  if constexpr (std::is_same_v<T, float>) return ValueType::F32;
  if constexpr (std::is_same_v<T, uint64_t>) return ValueType::U64;
  if constexpr (std::is_same_v<T, int64_t>) return ValueType::I64;
  if constexpr (std::is_same_v<T, double>) return ValueType::F64;
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // ggml order; n_dims written is shape.size()
  uint32_t type = 0;           // raw id, so that unknown ids can be written
  std::optional<uint64_t> offset;  // nullopt: the next aligned offset
  size_t n_bytes = 0;              // bytes of data written for it
};

// A GGUF file under construction. Key/values and tensors are written in the order added; tensor data follows
// the infos after padding to `alignment` (the padding the writer uses: set general.alignment to match), each
// tensor's data filled with a pattern that names the tensor and the byte, and no padding after the last one.
class Writer {
 public:
  uint32_t version = 3;
  size_t alignment = 32;
  std::optional<uint64_t> n_tensors_override, n_kv_override;

  template <typename T>
  Writer& scalar(const std::string& key, T v) {
    kvs_.push_back(Bytes().str(key).type(value_type_of<T>()).put(v));
    return *this;
  }
  Writer& boolean(const std::string& key, bool v) {
    kvs_.push_back(Bytes().str(key).type(ValueType::BOOL).put<uint8_t>(v ? 1 : 0));
    return *this;
  }
  Writer& string(const std::string& key, std::string_view s) {
    kvs_.push_back(Bytes().str(key).type(ValueType::STRING).str(s));
    return *this;
  }
  template <typename T>
  Writer& array(const std::string& key, const std::vector<T>& a) {
    Bytes b;
    b.str(key).type(ValueType::ARRAY).type(value_type_of<T>());
    b.put<uint64_t>(a.size());
    for (const T& x : a) b.put(x);
    kvs_.push_back(b);
    return *this;
  }
  Writer& bool_array(const std::string& key, const std::vector<bool>& a) {
    Bytes b;
    b.str(key).type(ValueType::ARRAY).type(ValueType::BOOL).put<uint64_t>(a.size());
    for (bool x : a) b.put<uint8_t>(x ? 1 : 0);
    kvs_.push_back(b);
    return *this;
  }
  Writer& string_array(const std::string& key, const std::vector<std::string>& a) {
    Bytes b;
    b.str(key).type(ValueType::ARRAY).type(ValueType::STRING).put<uint64_t>(a.size());
    for (const auto& s : a) b.str(s);
    kvs_.push_back(b);
    return *this;
  }
  Writer& raw_kv(const Bytes& b) {
    kvs_.push_back(b);
    return *this;
  }

  // A tensor of a known type: its data size follows from the shape.
  Writer& tensor(const std::string& name, std::vector<int64_t> shape, GgmlType type,
                 std::optional<uint64_t> offset = std::nullopt) {
    TensorSpec t{name, std::move(shape), static_cast<uint32_t>(type), offset, 0};
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    const auto tr = ggml_traits(type);
    t.n_bytes = static_cast<size_t>(n / tr.block_values) * tr.block_bytes;
    tensors_.push_back(std::move(t));
    return *this;
  }
  // A tensor written as given, with `n_bytes` of data (malformed infos).
  Writer& raw_tensor(TensorSpec t) {
    tensors_.push_back(std::move(t));
    return *this;
  }

  std::vector<uint8_t> build() {
    Bytes out;
    out.b = {'G', 'G', 'U', 'F'};
    out.put(version).put<uint64_t>(n_tensors_override.value_or(tensors_.size()));
    out.put<uint64_t>(n_kv_override.value_or(kvs_.size()));
    for (const auto& kv : kvs_) out.append(kv);
    offsets_.clear();
    uint64_t next = 0;
    for (const auto& t : tensors_) {
      const uint64_t off = t.offset.value_or(next);
      offsets_.push_back(off);
      if (off <= (1u << 20)) next = std::max<uint64_t>(next, (off + t.n_bytes + alignment - 1) / alignment * alignment);
      out.str(t.name).put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
      for (auto d : t.shape) out.put<int64_t>(d);
      out.put<uint32_t>(t.type).put<uint64_t>(off);
    }
    infos_end_ = out.b.size();
    if (!tensors_.empty())
      while (out.b.size() % alignment) out.b.push_back(0);
    data_start_ = out.b.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (offsets_[i] > (1u << 20)) continue;  // an offset far past any data: nothing to write
      const size_t at = data_start_ + offsets_[i];
      if (out.b.size() < at + tensors_[i].n_bytes) out.b.resize(at + tensors_[i].n_bytes, 0);
      for (size_t j = 0; j < tensors_[i].n_bytes; ++j) out.b[at + j] = pattern(i, j);
    }
    return out.b;
  }

  static uint8_t pattern(size_t tensor, size_t byte) { return static_cast<uint8_t>(tensor * 37 + byte * 7 + 1); }
  size_t data_start() const { return data_start_; }
  size_t infos_end() const { return infos_end_; }
  const std::vector<uint64_t>& offsets() const { return offsets_; }

 private:
  std::vector<Bytes> kvs_;
  std::vector<TensorSpec> tensors_;
  std::vector<uint64_t> offsets_;
  size_t data_start_ = 0, infos_end_ = 0;
};

constexpr const char* kName = "test.gguf";

// Parses a copy of the first `n` bytes in an allocation of exactly that size, so that ASan sees any over-read.
// Returns the message of the Error, or a text saying that no Error (or another exception) came.
std::string parse_error(const std::vector<uint8_t>& bytes, size_t n = SIZE_MAX) {
  n = std::min(n, bytes.size());
  std::unique_ptr<uint8_t[]> copy(n ? new uint8_t[n] : nullptr);
  if (n) std::memcpy(copy.get(), bytes.data(), n);
  try {
    File::parse(copy.get(), n, kName);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a longctx::Error: ") + e.what() + ">";
  }
  return "<parsed without error>";
}

::testing::AssertionResult fails_with(const std::vector<uint8_t>& bytes, std::string_view needle) {
  const std::string msg = parse_error(bytes);
  if (msg.find(needle) == std::string::npos || msg.find(kName) == std::string::npos)
    return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << needle << "\" or the file name";
  return ::testing::AssertionSuccess();
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

#define EXPECT_ERROR_HAS(expr, needle)                                                        \
  do {                                                                                        \
    const std::string msg_ = error_of([&] { (void)(expr); });                                 \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: \"" << msg_ << "\"";          \
  } while (0)

// One file with every metadata type and a few tensors of several types.
Writer full_writer(uint32_t version, std::optional<uint32_t> alignment) {
  Writer w;
  w.version = version;
  if (alignment) {
    w.alignment = *alignment;
    w.scalar<uint32_t>("general.alignment", *alignment);
  }
  w.string("general.architecture", "llama")
      .scalar<uint8_t>("t.u8", 200)
      .scalar<int8_t>("t.i8", -100)
      .scalar<uint16_t>("t.u16", 60000)
      .scalar<int16_t>("t.i16", -30000)
      .scalar<uint32_t>("t.u32", 4000000000u)
      .scalar<int32_t>("t.i32", -2000000000)
      .scalar<float>("t.f32", 1.5f)
      .boolean("t.bool", true)
      .boolean("t.bool0", false)
      .string("t.str", "h\xc3\xa9llo\nworld")
      .string("t.str_empty", "")
      .scalar<uint64_t>("t.u64", (uint64_t{1} << 63) + 5)
      .scalar<uint64_t>("t.u64_small", 123)
      .scalar<int64_t>("t.i64", -(int64_t{1} << 40))
      .scalar<double>("t.f64", 3.141592653589793)
      .array<uint8_t>("a.u8", {0, 255})
      .array<int8_t>("a.i8", {-128, 127})
      .array<uint16_t>("a.u16", {0, 65535})
      .array<int16_t>("a.i16", {-32768, 32767})
      .array<uint32_t>("a.u32", {0, 4294967295u})
      .array<int32_t>("a.i32", {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()})
      .array<uint64_t>("a.u64", {0, uint64_t{1} << 62})
      .array<int64_t>("a.i64", {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()})
      .array<float>("a.f32", {0.5f, -2.25f, 1e30f})
      .array<double>("a.f64", {1e-300, -0.0, 2.5})
      .bool_array("a.bool", {true, false, true})
      .string_array("a.str", {"a", "", std::string(300, 'x')})
      .array<uint32_t>("a.empty", {})
      .string_array("a.str_empty", {});
  w.tensor("token_embd.weight", {4, 3}, GgmlType::F32)
      .tensor("blk.0.q8", {64, 2}, GgmlType::Q8_0)
      .tensor("h", {8}, GgmlType::F16)
      .tensor("blk.0.k4", {256, 1, 1, 2}, GgmlType::Q4_K)
      .tensor("bf", {2, 2, 1}, GgmlType::BF16)
      .tensor("q41", {32}, GgmlType::Q4_1);
  return w;
}

void check_full_metadata(const File& f) {
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("t.u8"), 200);
  EXPECT_EQ(f.get_int("t.i8"), -100);
  EXPECT_EQ(f.get_int("t.u16"), 60000);
  EXPECT_EQ(f.get_int("t.i16"), -30000);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000);
  EXPECT_EQ(f.get_float("t.f32"), 1.5);
  EXPECT_EQ(f.get_bool_opt("t.bool"), std::optional<bool>(true));
  EXPECT_EQ(f.get_bool_opt("t.bool0"), std::optional<bool>(false));
  EXPECT_EQ(f.get_string("t.str"), "h\xc3\xa9llo\nworld");
  EXPECT_EQ(f.get_string("t.str_empty"), "");
  // A u64 above INT64_MAX stays exact in the value; the int getter refuses it rather than wrapping.
  EXPECT_EQ(std::get<uint64_t>(f.find("t.u64")->data), (uint64_t{1} << 63) + 5);
  EXPECT_ERROR_HAS(f.get_int("t.u64"), "out of range");
  EXPECT_EQ(f.get_int("t.u64_small"), 123);
  EXPECT_EQ(f.get_int("t.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(f.get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_float("t.i16"), -30000.0);  // integers read as floats too

  // Each value keeps the type it was written with.
  const std::pair<const char*, ValueType> types[] = {
      {"t.u8", ValueType::U8},   {"t.i8", ValueType::I8},   {"t.u16", ValueType::U16}, {"t.i16", ValueType::I16},
      {"t.u32", ValueType::U32}, {"t.i32", ValueType::I32}, {"t.f32", ValueType::F32}, {"t.bool", ValueType::BOOL},
      {"t.str", ValueType::STRING}, {"t.u64", ValueType::U64}, {"t.i64", ValueType::I64}, {"t.f64", ValueType::F64},
  };
  for (auto [key, t] : types) {
    ASSERT_NE(f.find(key), nullptr) << key;
    EXPECT_EQ(f.find(key)->type, t) << key;
  }
  const std::pair<const char*, ValueType> elem_types[] = {
      {"a.u8", ValueType::U8},   {"a.i8", ValueType::I8},   {"a.u16", ValueType::U16}, {"a.i16", ValueType::I16},
      {"a.u32", ValueType::U32}, {"a.i32", ValueType::I32}, {"a.u64", ValueType::U64}, {"a.i64", ValueType::I64},
      {"a.f32", ValueType::F32}, {"a.f64", ValueType::F64}, {"a.bool", ValueType::BOOL}, {"a.str", ValueType::STRING},
  };
  for (auto [key, t] : elem_types) {
    ASSERT_NE(f.find(key), nullptr) << key;
    EXPECT_EQ(f.find(key)->type, ValueType::ARRAY) << key;
    EXPECT_EQ(f.find(key)->elem_type, t) << key;
  }

  EXPECT_EQ(f.get_int_array("a.u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f.get_int_array("a.i8"), (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ(f.get_int_array("a.u16"), (std::vector<int64_t>{0, 65535}));
  EXPECT_EQ(f.get_int_array("a.i16"), (std::vector<int64_t>{-32768, 32767}));
  EXPECT_EQ(f.get_int_array("a.u32"), (std::vector<int64_t>{0, 4294967295ll}));
  EXPECT_EQ(f.get_int_array("a.i32"), (std::vector<int64_t>{-2147483648ll, 2147483647ll}));
  EXPECT_EQ(f.get_int_array("a.u64"), (std::vector<int64_t>{0, int64_t{1} << 62}));
  EXPECT_EQ(f.get_int_array("a.i64"), (std::vector<int64_t>{std::numeric_limits<int64_t>::min(),
                                                            std::numeric_limits<int64_t>::max()}));
  EXPECT_EQ(f.get_float_array("a.f32"), (std::vector<double>{0.5, -2.25, double(1e30f)}));
  const auto f64 = f.get_float_array("a.f64");
  ASSERT_EQ(f64.size(), 3u);
  EXPECT_EQ(f64[0], 1e-300);
  EXPECT_TRUE(f64[1] == 0.0 && std::signbit(f64[1]));
  EXPECT_EQ(f64[2], 2.5);
  EXPECT_EQ(f.get_float_array("a.i8"), (std::vector<double>{-128, 127}));  // integer arrays widen to double
  EXPECT_EQ(f.get_bool_array("a.bool"), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(f.get_string_array("a.str"), (std::vector<std::string>{"a", "", std::string(300, 'x')}));
  EXPECT_TRUE(f.get_int_array("a.empty").empty());
  EXPECT_TRUE(f.get_string_array("a.str_empty").empty());

  EXPECT_EQ(value_to_string(*f.find("t.str")), "\"h\xc3\xa9llo world\"");
  EXPECT_EQ(value_to_string(*f.find("a.u8")), "[2 items: 0 255]");
  EXPECT_EQ(value_to_string(*f.find("a.bool"), 2), "[3 items: true false ...]");
  EXPECT_STREQ(value_type_name(ValueType::F64), "f64");
}

void check_full_tensors(const File& f, const Writer& w, const uint8_t* base) {
  struct Expect {
    const char* name;
    std::vector<int64_t> shape;
    GgmlType type;
    size_t n_bytes;
  };
  const Expect want[] = {
      {"token_embd.weight", {4, 3}, GgmlType::F32, 48},
      {"blk.0.q8", {64, 2}, GgmlType::Q8_0, 4 * 34},
      {"h", {8}, GgmlType::F16, 16},
      {"blk.0.k4", {256, 1, 1, 2}, GgmlType::Q4_K, 2 * 144},
      {"bf", {2, 2, 1}, GgmlType::BF16, 8},
      {"q41", {32}, GgmlType::Q4_1, 20},
  };
  ASSERT_EQ(f.tensors().size(), std::size(want));
  EXPECT_EQ(w.data_start() % f.alignment(), 0u);
  for (size_t i = 0; i < std::size(want); ++i) {
    const TensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want[i].name);
    EXPECT_EQ(t.shape, want[i].shape);
    EXPECT_EQ(t.type, want[i].type);
    EXPECT_EQ(t.n_bytes, want[i].n_bytes);
    EXPECT_EQ(t.offset, w.offsets()[i]);
    EXPECT_EQ(t.offset % f.alignment(), 0u);
    EXPECT_EQ(t.data, base + w.data_start() + t.offset);
    int64_t n = 1;
    for (auto d : want[i].shape) n *= d;
    EXPECT_EQ(t.n_elements(), n);
    for (size_t j = 0; j < t.n_bytes; ++j) ASSERT_EQ(t.data[j], Writer::pattern(i, j)) << "byte " << j;
    EXPECT_EQ(f.find_tensor(want[i].name), &t);
  }
  EXPECT_EQ(f.find_tensor("missing"), nullptr);
}

struct RoundTripCase {
  uint32_t version;
  std::optional<uint32_t> alignment;  // nullopt: no general.alignment (32)
};

class GgufRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(GgufRoundTrip, EveryValueTypeAndTensorInfo) {
  const auto [version, alignment] = GetParam();
  Writer w = full_writer(version, alignment);
  const std::vector<uint8_t> bytes = w.build();
  auto f = File::parse(bytes.data(), bytes.size(), kName);
  EXPECT_EQ(f->version(), version);
  EXPECT_EQ(f->alignment(), alignment.value_or(32));
  EXPECT_EQ(f->path(), kName);
  EXPECT_EQ(f->file_size(), bytes.size());
  EXPECT_EQ(f->metadata().size(), 30u + (alignment ? 1 : 0));
  check_full_metadata(*f);
  check_full_tensors(*f, w, bytes.data());
}

INSTANTIATE_TEST_SUITE_P(VersionsAndAlignments, GgufRoundTrip,
                         ::testing::Values(RoundTripCase{2, std::nullopt}, RoundTripCase{3, std::nullopt},
                                           RoundTripCase{2, 64}, RoundTripCase{3, 1}, RoundTripCase{3, 8},
                                           RoundTripCase{3, 256}, RoundTripCase{3, 4096}),
                         [](const auto& info) {
                           return "v" + std::to_string(info.param.version) + "_align" +
                                  (info.param.alignment ? std::to_string(*info.param.alignment) : "default");
                         });

TEST(Gguf, AlignmentMayBeAnyIntegerType) {
  for (int width : {8, 16, 32, 64}) {
    Writer w;
    w.alignment = 64;
    if (width == 8) w.scalar<uint8_t>("general.alignment", 64);
    if (width == 16) w.scalar<int16_t>("general.alignment", 64);
    if (width == 32) w.scalar<int32_t>("general.alignment", 64);
    if (width == 64) w.scalar<uint64_t>("general.alignment", 64);
    w.tensor("a", {3}, GgmlType::F32).tensor("b", {5}, GgmlType::F32);
    const auto bytes = w.build();
    auto f = File::parse(bytes.data(), bytes.size(), kName);
    EXPECT_EQ(f->alignment(), 64u);
    EXPECT_EQ(f->tensors()[1].offset, 64u);
    EXPECT_EQ(f->tensors()[1].data, bytes.data() + w.data_start() + 64);
  }
}

TEST(Gguf, NoTensorsAndNoMetadata) {
  Writer w;
  const auto bytes = w.build();
  ASSERT_EQ(bytes.size(), 24u);
  auto f = File::parse(bytes.data(), bytes.size(), kName);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_TRUE(f->tensors().empty());
}

// ---- bad input: a clear Error, never a crash ----

TEST(GgufBadInput, EmptyAndNotGguf) {
  EXPECT_TRUE(fails_with({}, "is not a GGUF file"));
  EXPECT_EQ(error_of([] { File::parse(nullptr, 0, kName); }), "'test.gguf' is not a GGUF file (no GGUF magic)");
  EXPECT_TRUE(fails_with({'G', 'G', 'U'}, "is not a GGUF file"));
  auto bytes = Writer().build();
  bytes[3] = 'G';  // "GGUG"
  EXPECT_TRUE(fails_with(bytes, "is not a GGUF file"));
  const std::string text = "{\"not\": \"a model\"} and some more bytes to pass the header size";
  EXPECT_TRUE(fails_with(std::vector<uint8_t>(text.begin(), text.end()), "is not a GGUF file"));
}

TEST(GgufBadInput, UnsupportedVersion) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u, 0xffffffffu}) {
    Writer w;
    w.version = v;
    EXPECT_TRUE(fails_with(w.build(), fmt::format("has GGUF version {}; versions 2 and 3 are supported", v)));
  }
  // Only the magic and part of the version.
  EXPECT_TRUE(fails_with({'G', 'G', 'U', 'F', 3, 0}, "truncated"));
}

// Every proper prefix of a valid file must be refused: with tensors, the last byte of the last tensor's data
// is needed, and no cut point may crash or read past the buffer (ASan checks the exact-size copy).
TEST(GgufBadInput, TruncatedAtEveryCutPoint) {
  for (uint32_t version : {2u, 3u}) {
    Writer w = full_writer(version, 64);
    const auto bytes = w.build();
    ASSERT_EQ(parse_error(bytes), "<parsed without error>");
    for (size_t n = 0; n < bytes.size(); ++n) {
      const std::string msg = parse_error(bytes, n);
      ASSERT_TRUE(msg.find(kName) != std::string::npos &&
                  (msg.find("truncated") != std::string::npos || msg.find("not a GGUF") != std::string::npos ||
                   msg.find("cannot fit") != std::string::npos))
          << "prefix of " << n << " of " << bytes.size() << " bytes: " << msg;
    }
  }
  // Metadata only: every cut before the end of the last value.
  Writer w;
  w.string("general.architecture", "llama").string_array("tokens", {"a", "bc"}).array<float>("f", {1, 2});
  const auto bytes = w.build();
  ASSERT_EQ(parse_error(bytes), "<parsed without error>");
  for (size_t n = 0; n < bytes.size(); ++n)
    ASSERT_NE(parse_error(bytes, n).find(kName), std::string::npos) << "prefix " << n;
}

TEST(GgufBadInput, TensorDataPastTheEnd) {
  Writer w;
  w.tensor("a", {16}, GgmlType::F32).tensor("b", {32}, GgmlType::Q8_0);
  auto bytes = w.build();
  bytes.pop_back();
  EXPECT_TRUE(fails_with(bytes, "tensor 'b' (34 bytes at data offset 64) runs past the end of the file"));

  Writer far;
  far.tensor("a", {16}, GgmlType::F32).tensor("b", {4}, GgmlType::F32, uint64_t{1} << 62);
  EXPECT_TRUE(fails_with(far.build(), "tensor 'b' (16 bytes at data offset 4611686018427387904) runs past"));

  Writer wrap;  // an offset so large that offset + size wraps around
  wrap.tensor("a", {4}, GgmlType::F32, ~uint64_t{31});
  EXPECT_TRUE(fails_with(wrap.build(), "runs past the end"));

  // The file ends inside the padding before the data section.
  Writer pad;
  pad.alignment = 256;
  pad.scalar<uint32_t>("general.alignment", 256).tensor("a", {4}, GgmlType::F32);
  auto p = pad.build();
  ASSERT_NE(pad.infos_end() % 256, 0u);
  p.resize(pad.infos_end());
  EXPECT_TRUE(fails_with(p, "the tensor data would start at 256, past the end"));
}

TEST(GgufBadInput, HugeStringLength) {
  auto with_key_length = [](uint64_t n) {
    Writer w;
    w.raw_kv(Bytes().put<uint64_t>(n).put<uint32_t>(0x41414141));
    return w.build();
  };
  EXPECT_TRUE(fails_with(with_key_length(~uint64_t{0}), "a metadata key has length 18446744073709551615"));
  EXPECT_TRUE(fails_with(with_key_length(uint64_t{1} << 40), "a metadata key has length"));
  EXPECT_TRUE(fails_with(with_key_length(1000), "a metadata key needs 1000 bytes at offset 32"));

  Writer v;
  v.raw_kv(Bytes().str("k").type(ValueType::STRING).put<uint64_t>(uint64_t{1} << 62));
  EXPECT_TRUE(fails_with(v.build(), "a string value has length"));

  Writer sa;
  sa.raw_kv(Bytes().str("k").type(ValueType::ARRAY).type(ValueType::STRING).put<uint64_t>(1).put<uint64_t>(1ull << 50));
  EXPECT_TRUE(fails_with(sa.build(), "a string array item has length"));

  Writer t;
  t.raw_tensor({std::string(5, 'x'), {4}, 0, std::nullopt, 16});
  auto bytes = t.build();
  std::memset(bytes.data() + 24, 0xff, 8);  // the name's length
  EXPECT_TRUE(fails_with(bytes, "a tensor name has length"));
}

TEST(GgufBadInput, HugeArrayCount) {
  for (ValueType et : {ValueType::U8, ValueType::U32, ValueType::F64, ValueType::BOOL, ValueType::STRING}) {
    for (uint64_t n : {uint64_t{1} << 40, uint64_t{1} << 61, uint64_t{1} << 63, ~uint64_t{0}}) {
      Writer w;
      w.raw_kv(Bytes().str("arr").type(ValueType::ARRAY).type(et).put<uint64_t>(n).put<uint64_t>(0));
      EXPECT_TRUE(fails_with(w.build(), et == ValueType::STRING ? "a string array needs" : "an array needs"))
          << value_type_name(et) << " x " << n;
    }
  }
}

TEST(GgufBadInput, HugeCounts) {
  Writer t;
  t.n_tensors_override = uint64_t{1} << 60;
  EXPECT_TRUE(fails_with(t.build(), "tensors cannot fit in 24 bytes"));
  Writer k;
  k.n_kv_override = ~uint64_t{0};
  EXPECT_TRUE(fails_with(k.build(), "18446744073709551615 metadata entries and 0 tensors cannot fit"));
  // Plausible counts, but more entries than the file holds.
  Writer more;
  more.string("a", "b").string("c", "d");
  more.n_kv_override = 3;
  EXPECT_TRUE(fails_with(more.build(), "truncated or corrupt: a metadata key needs 8 bytes"));
  Writer more_t;  // the infos only, one fewer than counted
  more_t.tensor(std::string(20, 'x'), {4}, GgmlType::F32).tensor(std::string(20, 'y'), {4}, GgmlType::F32);
  more_t.n_tensors_override = 3;
  auto bytes = more_t.build();
  bytes.resize(more_t.infos_end());
  EXPECT_TRUE(fails_with(bytes, "truncated or corrupt: a tensor name needs 8 bytes"));
}

TEST(GgufBadInput, UnknownValueType) {
  for (uint32_t t : {13u, 100u, 0xffffffffu}) {
    Writer w;
    w.raw_kv(Bytes().str("weird.key").put<uint32_t>(t).put<uint64_t>(0));
    EXPECT_TRUE(fails_with(w.build(), fmt::format("metadata key 'weird.key' has unknown value type {}", t)));
    Writer a;
    a.raw_kv(Bytes().str("weird.arr").type(ValueType::ARRAY).put<uint32_t>(t).put<uint64_t>(0));
    EXPECT_TRUE(fails_with(a.build(), fmt::format("metadata key 'weird.arr' has unknown value type {}", t)));
  }
  Writer nested;
  nested.raw_kv(Bytes().str("n").type(ValueType::ARRAY).type(ValueType::ARRAY).put<uint64_t>(1).put<uint64_t>(0));
  EXPECT_TRUE(fails_with(nested.build(), "nested arrays (key 'n') are not supported"));
}

TEST(GgufBadInput, UnknownTensorType) {
  for (uint32_t id : {4u, 5u, 16u, 29u, 31u, 1000u}) {
    Writer w;
    w.raw_tensor({"w", {32}, id, std::nullopt, 64});
    EXPECT_TRUE(fails_with(w.build(), fmt::format("tensor 'w' has unknown type id {}", id)));
  }
}

TEST(GgufBadInput, BadDimensions) {
  for (size_t n_dims : {0, 5, 8}) {
    Writer w;
    w.raw_tensor({"w", std::vector<int64_t>(n_dims, 1), 0, std::nullopt, 4});
    EXPECT_TRUE(fails_with(w.build(), fmt::format("tensor 'w' has {} dimensions (1 to 4 allowed)", n_dims)));
  }
  Writer many;  // a dimension count far too large to be read
  many.raw_tensor({"w", {1}, 0, std::nullopt, 4});
  auto bytes = many.build();
  std::memset(bytes.data() + 24 + 8 + 1, 0xff, 4);
  EXPECT_TRUE(fails_with(bytes, "tensor 'w' has 4294967295 dimensions"));

  const std::vector<std::vector<int64_t>> bad = {
      {0}, {-1}, {4, 0}, {int64_t{1} << 41}, {int64_t{1} << 40, int64_t{1} << 40}, {1 << 20, 1 << 20, 1 << 20},
      {std::numeric_limits<int64_t>::min()}};
  for (const auto& shape : bad) {
    Writer w;
    w.raw_tensor({"w", shape, 0, std::nullopt, 4});
    EXPECT_TRUE(fails_with(w.build(), "tensor 'w' has a bad dimension"));
  }
  Writer rows;
  rows.raw_tensor({"w", {33, 2}, static_cast<uint32_t>(GgmlType::Q8_0), std::nullopt, 64});
  EXPECT_TRUE(fails_with(rows.build(), "tensor 'w' of type Q8_0 has rows of 33 values, not a multiple of 32"));
}

TEST(GgufBadInput, MisalignedOffset) {
  Writer w;
  w.tensor("a", {4}, GgmlType::F32).tensor("b", {4}, GgmlType::F32, 16);
  EXPECT_TRUE(fails_with(w.build(), "tensor 'b' offset 16 is not aligned to 32"));
  Writer w64;
  w64.alignment = 64;
  w64.scalar<uint32_t>("general.alignment", 64).tensor("a", {4}, GgmlType::F32, 32);
  EXPECT_TRUE(fails_with(w64.build(), "tensor 'a' offset 32 is not aligned to 64"));
}

TEST(GgufBadInput, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u, 1u << 21}) {
    Writer w;
    w.scalar<uint32_t>("general.alignment", a);
    EXPECT_TRUE(fails_with(w.build(), fmt::format("general.alignment {} is not", a)));
  }
  Writer neg;
  neg.scalar<int32_t>("general.alignment", -32);
  EXPECT_TRUE(fails_with(neg.build(), "general.alignment -32 is not"));
  Writer str;
  str.string("general.alignment", "32");
  EXPECT_TRUE(fails_with(str.build(), "metadata 'general.alignment' should be an integer"));
}

TEST(GgufBadInput, DuplicateKeyAndTensor) {
  Writer k;
  k.string("general.name", "a").scalar<uint32_t>("x", 1).string("general.name", "b");
  EXPECT_TRUE(fails_with(k.build(), "metadata key 'general.name' appears twice"));
  Writer t;
  t.tensor("w", {4}, GgmlType::F32).tensor("v", {4}, GgmlType::F32).tensor("w", {8}, GgmlType::F32);
  EXPECT_TRUE(fails_with(t.build(), "tensor 'w' appears twice"));
}

TEST(GgufBadInput, WrongTypedGetters) {
  Writer w = full_writer(3, std::nullopt);
  const auto bytes = w.build();
  auto f = File::parse(bytes.data(), bytes.size(), kName);
  EXPECT_ERROR_HAS(f->get_string("t.u32"), "'test.gguf': metadata 't.u32' should be a string");
  EXPECT_ERROR_HAS(f->get_string_opt("a.str"), "metadata 'a.str' should be a string");
  EXPECT_ERROR_HAS(f->get_int("t.str"), "metadata 't.str' should be an integer");
  EXPECT_ERROR_HAS(f->get_int("t.f32"), "metadata 't.f32' should be an integer");
  EXPECT_ERROR_HAS(f->get_int_opt("t.bool"), "metadata 't.bool' should be an integer");
  EXPECT_ERROR_HAS(f->get_float("t.str"), "metadata 't.str' should be a number");
  EXPECT_ERROR_HAS(f->get_float("a.f32"), "metadata 'a.f32' should be a number");
  EXPECT_ERROR_HAS(f->get_bool_opt("t.u8"), "metadata 't.u8' should be a bool");
  EXPECT_ERROR_HAS(f->get_string_array("a.u32"), "metadata 'a.u32' should be an array of strings");
  EXPECT_ERROR_HAS(f->get_string_array("t.str"), "metadata 't.str' should be an array of strings");
  EXPECT_ERROR_HAS(f->get_int_array("a.f32"), "metadata 'a.f32' should be an array of integers");
  EXPECT_ERROR_HAS(f->get_int_array("a.bool"), "metadata 'a.bool' should be an array of integers");
  EXPECT_ERROR_HAS(f->get_float_array("a.str"), "metadata 'a.str' should be an array of numbers");
  EXPECT_ERROR_HAS(f->get_float_array("a.bool"), "metadata 'a.bool' should be an array of numbers");
  EXPECT_ERROR_HAS(f->get_float_array("t.f32"), "metadata 't.f32' should be an array of numbers");
  EXPECT_ERROR_HAS(f->get_bool_array("a.u8"), "metadata 'a.u8' should be an array of bools");
  EXPECT_ERROR_HAS(f->get_bool_array("t.bool"), "metadata 't.bool' should be an array of bools");
  // Missing keys: required getters throw, optional ones return nullopt.
  for (auto get : {+[](const File& f) { (void)f.get_string("nope"); }, +[](const File& f) { (void)f.get_int("nope"); },
                   +[](const File& f) { (void)f.get_float("nope"); },
                   +[](const File& f) { (void)f.get_string_array("nope"); },
                   +[](const File& f) { (void)f.get_int_array("nope"); },
                   +[](const File& f) { (void)f.get_float_array("nope"); },
                   +[](const File& f) { (void)f.get_bool_array("nope"); }})
    EXPECT_ERROR_HAS(get(*f), "'test.gguf': required metadata 'nope' is missing");
  EXPECT_FALSE(f->get_string_opt("nope"));
  EXPECT_FALSE(f->get_int_opt("nope"));
  EXPECT_FALSE(f->get_float_opt("nope"));
  EXPECT_FALSE(f->get_bool_opt("nope"));
  EXPECT_FALSE(f->has("nope"));
  EXPECT_TRUE(f->has("t.u8"));
}

// ---- what parsing costs, and values that do not fit ----

// Parses `bytes` (copied first, outside the count) and returns the bytes operator new gave out meanwhile;
// *error receives the Error's message, or stays empty when the file parsed.
size_t bytes_allocated_parsing(const std::vector<uint8_t>& bytes, std::string* error) {
  const std::vector<uint8_t> copy = bytes;
  size_t n_bytes = 0;
  error->clear();
  t_new_bytes = &n_bytes;
  try {
    File::parse(copy.data(), copy.size(), kName);
  } catch (const Error& e) {
    t_new_bytes = nullptr;
    *error = e.what();
  }
  t_new_bytes = nullptr;
  return n_bytes;
}

// Arrays of numbers are kept as the file writes them: a u8 or i8 array is not widened to int64 (8 bytes in
// memory for each byte of the file), so parsing costs a small fraction of the file however it is written.
TEST(GgufMemory, NumberArraysCostNothingBeyondTheFile) {
  std::vector<uint8_t> u8(1 << 20);
  std::vector<int8_t> i8(1 << 20);
  for (size_t i = 0; i < u8.size(); ++i) {
    u8[i] = static_cast<uint8_t>(i * 7);
    i8[i] = static_cast<int8_t>(i * 13);
  }
  Writer w;
  w.array<uint8_t>("big.u8", u8).array<int8_t>("big.i8", i8).array<uint64_t>("big.u64", std::vector<uint64_t>(4096, 3));
  const auto bytes = w.build();
  std::string error;
  const size_t allocated = bytes_allocated_parsing(bytes, &error);
  EXPECT_EQ(error, "");
  EXPECT_LT(allocated, bytes.size() / 64) << "parsing " << bytes.size() << " bytes allocated " << allocated;

  // The getters still give every item, widened on request.
  auto f = File::parse(bytes.data(), bytes.size(), kName);
  const auto got_u8 = f->get_int_array("big.u8");
  const auto got_i8 = f->get_float_array("big.i8");
  ASSERT_EQ(got_u8.size(), u8.size());
  ASSERT_EQ(got_i8.size(), i8.size());
  for (size_t i = 0; i < u8.size(); ++i) {
    ASSERT_EQ(got_u8[i], u8[i]) << i;
    ASSERT_EQ(got_i8[i], i8[i]) << i;
  }
  EXPECT_EQ(value_to_string(*f->find("big.i8"), 3), "[1048576 items: 0 13 26 ...]");
}

// A string array's count is checked against the strings the file holds before anything is reserved for it:
// a count of as many strings as the remaining bytes could hold, with the last one cut short, allocates
// nothing (reserving first would take 32 bytes of std::string for each 8 bytes of the file).
TEST(GgufMemory, StringArrayReservesOnlyWhatTheFileHolds) {
  constexpr uint64_t kItems = 1 << 17;
  Bytes kv;
  kv.str("tokens").type(ValueType::ARRAY).type(ValueType::STRING).put<uint64_t>(kItems);
  for (uint64_t i = 0; i + 1 < kItems; ++i) kv.put<uint64_t>(0);  // empty strings
  kv.put<uint64_t>(1000);                                           // the last one runs past the end
  Writer w;
  w.raw_kv(kv);
  const auto bytes = w.build();
  std::string error;
  const size_t allocated = bytes_allocated_parsing(bytes, &error);
  EXPECT_NE(error.find("a string array item needs 1000 bytes"), std::string::npos) << error;
  EXPECT_LT(allocated, bytes.size() / 64) << "parsing " << bytes.size() << " bytes allocated " << allocated;

  // Whole, the same array parses, at the cost of its strings alone.
  Bytes whole;
  whole.str("tokens").type(ValueType::ARRAY).type(ValueType::STRING).put<uint64_t>(kItems);
  for (uint64_t i = 0; i < kItems; ++i) whole.put<uint64_t>(0);
  Writer ok;
  ok.raw_kv(whole);
  const auto ok_bytes = ok.build();
  const size_t ok_allocated = bytes_allocated_parsing(ok_bytes, &error);
  EXPECT_EQ(error, "");
  EXPECT_LE(ok_allocated, kItems * sizeof(std::string) + 4096);
  auto f = File::parse(ok_bytes.data(), ok_bytes.size(), kName);
  EXPECT_EQ(f->get_string_array("tokens").size(), kItems);
}

// 2^24 items is the most an array may hold (real vocabularies and merge lists have about 2^18 to 2^20), which
// bounds what one getter call may widen.
TEST(GgufMemory, ArrayItemLimit) {
  for (uint64_t n : {uint64_t{1} << 24, (uint64_t{1} << 24) + 1}) {
    Writer w;
    w.array<uint8_t>("mask", std::vector<uint8_t>(n, 1));
    const auto bytes = w.build();
    if (n == uint64_t{1} << 24) {
      EXPECT_EQ(parse_error(bytes), "<parsed without error>");
    } else {
      EXPECT_TRUE(fails_with(bytes, "metadata key 'mask' is an array of 16777217 items (at most 16777216 supported)"));
    }
  }
}

// A u64 above INT64_MAX cannot be an int64: refused by the array getters as by the scalar one, never wrapped to
// a negative number.
TEST(GgufBadInput, U64AboveInt64MaxInAnArray) {
  Writer w;
  w.scalar<uint64_t>("one", (uint64_t{1} << 63) + 5)
      .array<uint64_t>("ids", {7, uint64_t{1} << 63, 9})
      .array<uint64_t>("fits", {0, (uint64_t{1} << 63) - 1});
  const auto bytes = w.build();
  auto f = File::parse(bytes.data(), bytes.size(), kName);
  EXPECT_ERROR_HAS(f->get_int("one"), "'test.gguf': metadata 'one' = 9223372036854775813 is out of range");
  EXPECT_ERROR_HAS(f->get_float("one"), "metadata 'one' = 9223372036854775813 is out of range");
  EXPECT_ERROR_HAS(f->get_int_array("ids"), "'test.gguf': item 1 of metadata 'ids' = 9223372036854775808 is out of range");
  EXPECT_ERROR_HAS(f->get_float_array("ids"), "item 1 of metadata 'ids' = 9223372036854775808 is out of range");
  EXPECT_EQ(f->get_int_array("fits"), (std::vector<int64_t>{0, std::numeric_limits<int64_t>::max()}));
  // Printing shows the value as written.
  EXPECT_EQ(value_to_string(*f->find("ids")), "[3 items: 7 9223372036854775808 9]");
}

// ---- files on disk ----

std::string temp_path(const std::string& leaf) {
  return (std::filesystem::temp_directory_path() / ("longctx_gguf_test_" + std::to_string(::getpid()) + "_" + leaf))
      .string();
}

TEST(GgufOpen, MissingFileEmptyFileAndDirectory) {
  const std::string missing = "/nonexistent-dir/longctx/missing-model.gguf";
  EXPECT_ERROR_HAS(File::open(missing), "cannot open '" + missing + "'");

  const std::string empty = temp_path("empty.gguf");
  std::ofstream(empty).close();
  EXPECT_ERROR_HAS(File::open(empty), "'" + empty + "' is not a GGUF file");
  std::filesystem::remove(empty);

  const std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_ERROR_HAS(File::open(dir), "is not a regular file");
}

TEST(GgufOpen, RoundTripThroughAMappedFile) {
  Writer w = full_writer(3, 128);
  const auto bytes = w.build();
  const std::string path = temp_path("full.gguf");
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  {
    auto f = File::open(path);
    EXPECT_EQ(f->path(), path);
    EXPECT_EQ(f->alignment(), 128u);
    check_full_metadata(*f);
    // The data pointers point into the mapping, at the right bytes.
    const uint8_t* base = f->tensors()[0].data - w.data_start() - f->tensors()[0].offset;
    check_full_tensors(*f, w, base);
  }
  // Truncated on disk: the message names the path.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size() - 1));
  }
  EXPECT_ERROR_HAS(File::open(path), "'" + path + "' is truncated or corrupt: tensor 'q41'");
  std::filesystem::remove(path);
}

// ---- the model loader: counts checked against the tensors before anything is sized by them ----

// A llama of `n_layer` layers by its metadata, with tensors for `n_layer_tensors` layers (n_embd 32, one head).
std::vector<uint8_t> tiny_llama(uint32_t n_layer, int n_layer_tensors, const std::string& arch = "llama") {
  Writer w;
  w.string("general.architecture", arch)
      .scalar<uint32_t>(arch + ".block_count", n_layer)
      .scalar<uint32_t>(arch + ".embedding_length", 32)
      .scalar<uint32_t>(arch + ".attention.head_count", 1)
      .scalar<uint32_t>(arch + ".feed_forward_length", 32)
      .scalar<uint32_t>(arch + ".context_length", 64)
      .scalar<float>(arch + ".attention.layer_norm_rms_epsilon", 1e-5f)
      .scalar<uint32_t>(arch + ".attention.sliding_window", 16);
  w.tensor("token_embd.weight", {32, 4}, GgmlType::F32).tensor("output_norm.weight", {32}, GgmlType::F32);
  for (int i = 0; i < n_layer_tensors; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    for (const char* norm : {"attn_norm", "ffn_norm"}) w.tensor(b + norm + ".weight", {32}, GgmlType::F32);
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
      w.tensor(b + m + ".weight", {32, 32}, GgmlType::F32);
    if (arch == "gemma3")
      for (const char* norm : {"attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"})
        w.tensor(b + norm + ".weight", {32}, GgmlType::F32);
  }
  return w.build();
}

// Model::load of `bytes` written to a temporary file: the Error's message, or "<loaded>".
std::string load_error(const std::vector<uint8_t>& bytes, const std::string& leaf) {
  const std::string path = temp_path(leaf);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  std::string msg = error_of([&] { (void)Model::load(path); });
  std::filesystem::remove(path);
  return msg == "<no error>" ? "<loaded>" : msg;
}

TEST(GgufModelLoad, BlockCountBeyondTheTensorsIsRefusedBeforeAllocating) {
  // The file is otherwise a model: one layer of each loads.
  EXPECT_EQ(load_error(tiny_llama(1, 1), "llama1.gguf"), "<loaded>");
  EXPECT_EQ(load_error(tiny_llama(1, 1, "gemma3"), "gemma1.gguf"), "<loaded>");
  // 2^30 layers (the most the loader reads) would size 2^30 layer structs before the first tensor was looked up.
  const std::string msg = load_error(tiny_llama(1u << 30, 1), "llama_huge.gguf");
  EXPECT_NE(msg.find("metadata 'llama.block_count' = 1073741824 is more layers than the file has tensors for "
                     "(11 tensors, 9 a layer)"),
            std::string::npos)
      << msg;
  EXPECT_NE(load_error(tiny_llama(1u << 30, 1, "gemma3"), "gemma_huge.gguf")
                .find("'gemma3.block_count' = 1073741824 is more layers than the file has tensors for (15 tensors, "
                      "13 a layer)"),
            std::string::npos);
  EXPECT_NE(load_error(tiny_llama(2, 1), "llama2.gguf").find("'llama.block_count' = 2 is more layers"),
            std::string::npos);
  EXPECT_EQ(load_error(tiny_llama(3, 3), "llama3.gguf"), "<loaded>");
}

// The fuzzer's seeds (fuzz/corpus/gguf) come from this writer: with LONGCTX_WRITE_GGUF_SEEDS=<dir> this test
// writes them there; otherwise it checks that the committed seeds are all there and still parse.
TEST(GgufSeeds, WriteOrCheck) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  seeds.emplace_back("seed_full_v3.gguf", full_writer(3, std::nullopt).build());
  seeds.emplace_back("seed_full_v2_align64.gguf", full_writer(2, 64).build());
  {
    Writer w;
    w.string("general.architecture", "llama").scalar<uint32_t>("llama.block_count", 1);
    w.string_array("tokenizer.ggml.tokens", {"<s>", "a", "b"}).array<float>("tokenizer.ggml.scores", {0, -1, -2});
    w.array<int32_t>("tokenizer.ggml.token_type", {3, 1, 1});
    w.tensor("token_embd.weight", {32, 3}, GgmlType::Q8_0).tensor("output_norm.weight", {32}, GgmlType::F32);
    seeds.emplace_back("seed_llama_like.gguf", w.build());
  }
  seeds.emplace_back("seed_empty.gguf", Writer().build());
  // Tiny tokenizers of both kinds, so that the fuzzer starts from files the tokenizer accepts.
  {
    Writer w;
    w.string("tokenizer.ggml.model", "gpt2").string("tokenizer.ggml.pre", "smollm");
    w.string_array("tokenizer.ggml.tokens", {"a", "b", "ab", "\xC4\xA0", "\xC4\xA0" "a", "1", "<|im_end|>", "<x>"});
    w.array<int32_t>("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 1, 3, 4});
    w.string_array("tokenizer.ggml.merges", {"a b", "\xC4\xA0 a"});
    w.scalar<uint32_t>("tokenizer.ggml.eos_token_id", 6).boolean("tokenizer.ggml.add_bos_token", false);
    seeds.emplace_back("seed_tokenizer_gpt2.gguf", w.build());
  }
  {
    Writer w;
    w.string("general.architecture", "llama").string("tokenizer.ggml.model", "llama");
    w.string_array("tokenizer.ggml.tokens",
                   {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab", "<0x41>", "  "});
    w.array<float>("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -1.5f, -2.5f, -9, -4});
    w.array<int32_t>("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1, 6, 4});
    w.scalar<uint32_t>("tokenizer.ggml.bos_token_id", 1).scalar<uint32_t>("tokenizer.ggml.eos_token_id", 2);
    w.scalar<uint32_t>("tokenizer.ggml.unknown_token_id", 0).boolean("tokenizer.ggml.add_space_prefix", true);
    seeds.emplace_back("seed_tokenizer_llama.gguf", w.build());
  }
  if (const char* dir = std::getenv("LONGCTX_WRITE_GGUF_SEEDS")) {
    std::filesystem::create_directories(dir);
    for (const auto& [name, bytes] : seeds) {
      std::ofstream out(std::filesystem::path(dir) / name, std::ios::binary);
      out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    return;
  }
  const auto committed = std::filesystem::path(LONGCTX_SOURCE_DIR) / "fuzz/corpus/gguf";
  for (const auto& [name, bytes] : seeds) {
    const auto path = committed / name;
    EXPECT_TRUE(std::filesystem::exists(path)) << path << " is missing: LONGCTX_WRITE_GGUF_SEEDS=" << committed
                                               << " gguf_test --gtest_filter=GgufSeeds.* writes it";
    if (std::filesystem::exists(path)) {
      EXPECT_NO_THROW(File::open(path.string())) << path;
    }
  }
}

// ---- the real model ----

TEST(GgufModel, SmolLM2KnownFacts) {
  const std::string path = test::smollm2_path();
  LONGCTX_REQUIRE_MODEL(path);
  auto f = File::open(path);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f->get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(f->get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f->tensors().size(), 272u);
  const TensorInfo* emb = f->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, GgmlType::Q8_0);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(emb->n_bytes, size_t{49152} * 18 * 34);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  // Every tensor lies inside the file, aligned, and they do not overlap.
  std::vector<std::pair<const uint8_t*, size_t>> spans;
  for (const auto& t : f->tensors()) {
    EXPECT_EQ(t.offset % f->alignment(), 0u) << t.name;
    spans.emplace_back(t.data, t.n_bytes);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) EXPECT_LE(spans[i - 1].first + spans[i - 1].second, spans[i].first);
  EXPECT_LE(spans.back().first + spans.back().second - spans.front().first, f->file_size());
}

}  // namespace
}  // namespace longctx::gguf
