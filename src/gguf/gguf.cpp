#include "gguf/gguf.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <string_view>

#include "core/error.h"

namespace longctx::gguf {
namespace {

// Limits that no real file reaches; they stop a corrupt count from driving a huge allocation before the
// bounds checks catch it. The largest arrays in real files are vocabularies and merge lists of about 2^18 to
// 2^20 items; 2^24 items bound what one array may cost a getter that widens it (8 bytes an item).
constexpr uint64_t kMaxStringBytes = 1ull << 30;
constexpr uint64_t kMaxArrayItems = 1ull << 24;
constexpr uint64_t kMaxDims = 4;

// A cursor over the mapped bytes; every read is checked against the end of the file.
class Reader {
 public:
  Reader(const uint8_t* base, size_t size, const std::string& name) : base_(base), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      fail("'{}' is truncated or corrupt: {} needs {} bytes at offset {}, but the file has {} bytes", name_, what,
           n, pos_, size_);
  }
  // The next n bytes, checked to lie inside the file.
  const uint8_t* take(uint64_t n, const char* what) {
    need(n, what);
    const uint8_t* p = base_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string_view read_string_view(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > kMaxStringBytes) fail("'{}' is corrupt: {} has length {} at offset {}", name_, what, n, pos_ - 8);
    return {reinterpret_cast<const char*>(take(n, what)), static_cast<size_t>(n)};
  }
  std::string read_string(const char* what) { return std::string(read_string_view(what)); }
  const std::string& name() const { return name_; }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::BOOL: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    default: return 0;
  }
}

const char* scalar_what(ValueType t) {
  switch (t) {
    case ValueType::U8: return "a u8";
    case ValueType::I8: return "an i8";
    case ValueType::U16: return "a u16";
    case ValueType::I16: return "an i16";
    case ValueType::U32: return "a u32";
    case ValueType::I32: return "an i32";
    case ValueType::F32: return "an f32";
    case ValueType::BOOL: return "a bool";
    case ValueType::U64: return "a u64";
    case ValueType::I64: return "an i64";
    case ValueType::F64: return "an f64";
    default: return "a value";
  }
}

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::U16: case ValueType::I16: case ValueType::U32:
    case ValueType::I32: case ValueType::U64: case ValueType::I64: return true;
    default: return false;
  }
}

bool is_float(ValueType t) { return t == ValueType::F32 || t == ValueType::F64; }

ValueType read_type(Reader& r, const std::string& key) {
  const uint32_t t = r.read<uint32_t>("a value type");
  if (t > static_cast<uint32_t>(ValueType::F64))
    fail("'{}' is corrupt: metadata key '{}' has unknown value type {}", r.name(), key, t);
  return static_cast<ValueType>(t);
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// One scalar of type t at p (scalar_size(t) bytes): integers as int64, except U64, which stays unsigned so that
// large ids are not wrapped; floats as double.
using Scalar = std::variant<int64_t, uint64_t, double, bool>;
Scalar decode_scalar(const uint8_t* p, ValueType t) {
  switch (t) {
    case ValueType::U8: return int64_t{load<uint8_t>(p)};
    case ValueType::I8: return int64_t{load<int8_t>(p)};
    case ValueType::U16: return int64_t{load<uint16_t>(p)};
    case ValueType::I16: return int64_t{load<int16_t>(p)};
    case ValueType::U32: return int64_t{load<uint32_t>(p)};
    case ValueType::I32: return int64_t{load<int32_t>(p)};
    case ValueType::U64: return load<uint64_t>(p);
    case ValueType::I64: return load<int64_t>(p);
    case ValueType::F32: return double{load<float>(p)};
    case ValueType::F64: return load<double>(p);
    case ValueType::BOOL: return load<uint8_t>(p) != 0;
    default: return int64_t{0};  // callers pass scalar types only
  }
}

// An integer scalar as int64; nullopt for a U64 above INT64_MAX, which the getters refuse rather than wrap.
std::optional<int64_t> as_int64(const Scalar& s) {
  if (const auto* u = std::get_if<uint64_t>(&s)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(*u);
  }
  return std::get<int64_t>(s);
}

Value read_value(Reader& r, ValueType t, const std::string& key) {
  Value v;
  v.type = t;
  if (t == ValueType::STRING) {
    v.data = r.read_string("a string value");
    return v;
  }
  if (t != ValueType::ARRAY) {
    std::visit([&](auto x) { v.data = x; }, decode_scalar(r.take(scalar_size(t), scalar_what(t)), t));
    return v;
  }
  const ValueType et = read_type(r, key);
  v.elem_type = et;
  const uint64_t n = r.read<uint64_t>("an array length");
  if (et == ValueType::ARRAY) fail("'{}': nested arrays (key '{}') are not supported", r.name(), key);
  const uint64_t item_bytes = et == ValueType::STRING ? 8 : scalar_size(et);  // a string: at least its length
  r.need(n > std::numeric_limits<uint64_t>::max() / item_bytes ? std::numeric_limits<uint64_t>::max()
                                                                : n * item_bytes,
         et == ValueType::STRING ? "a string array" : "an array");
  if (n > kMaxArrayItems)
    fail("'{}' is corrupt: metadata key '{}' is an array of {} items (at most {} supported)", r.name(), key, n,
         kMaxArrayItems);
  if (et == ValueType::STRING) {
    // Every item is found in the file before any is stored: a count the file cannot back allocates nothing,
    // and the reservation is for strings that are there.
    Reader scan = r;
    for (uint64_t i = 0; i < n; ++i) scan.read_string_view("a string array item");
    std::vector<std::string> a;
    a.reserve(n);
    for (uint64_t i = 0; i < n; ++i) a.push_back(r.read_string("a string array item"));
    v.data = std::move(a);
    return v;
  }
  v.data = NumberArray{r.take(n * item_bytes, "an array"), n};
  return v;
}

}  // namespace

std::unique_ptr<File> File::open(const std::string& path) {
  auto map = std::make_unique<MappedFile>(path);
  auto f = parse(map->data(), map->size(), path);
  f->map_ = std::move(map);
  return f;
}

std::unique_ptr<File> File::parse(const uint8_t* data, size_t size, const std::string& name) {
  std::unique_ptr<File> f(new File());
  f->base_ = data;
  f->size_ = size;
  f->name_ = name;
  f->parse_all();
  return f;
}

void File::parse_all() {
  Reader r(base_, size_, name_);
  if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0) fail("'{}' is not a GGUF file (no GGUF magic)", name_);
  r.read<uint32_t>("the magic");
  version_ = r.read<uint32_t>("the version");
  if (version_ != 2 && version_ != 3)
    fail("'{}' has GGUF version {}; versions 2 and 3 are supported", name_, version_);
  const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  const uint64_t n_kv = r.read<uint64_t>("the metadata count");
  // Each key/value takes at least 8 + 4 bytes, each tensor info at least 8 + 4 + 8 + 4 + 8.
  if (n_kv > size_ / 12 || n_tensors > size_ / 32)
    fail("'{}' is corrupt: {} metadata entries and {} tensors cannot fit in {} bytes", name_, n_kv, n_tensors,
         size_);

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string("a metadata key");
    const ValueType t = read_type(r, key);
    Value v = read_value(r, t, key);
    if (kv_.count(key)) fail("'{}' is corrupt: metadata key '{}' appears twice", name_, key);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (auto a = get_int_opt("general.alignment")) {
    if (*a <= 0 || *a > (1 << 20) || (*a & (*a - 1)) != 0)
      fail("'{}' is corrupt: general.alignment {} is not a power of two of at most 1 MiB", name_, *a);
    alignment_ = static_cast<size_t>(*a);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo ti;
    ti.name = r.read_string("a tensor name");
    const uint32_t n_dims = r.read<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("'{}' is corrupt: tensor '{}' has {} dimensions (1 to {} allowed)", name_, ti.name, n_dims, kMaxDims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t dim = r.read<int64_t>("a tensor dimension");
      if (dim <= 0 || dim > (int64_t{1} << 40) || n_elements > (int64_t{1} << 42) / dim)
        fail("'{}' is corrupt: tensor '{}' has a bad dimension {}", name_, ti.name, dim);
      n_elements *= dim;
      ti.shape.push_back(dim);
    }
    const uint32_t type_id = r.read<uint32_t>("a tensor type");
    const auto traits = ggml_type_traits(type_id);
    if (!traits) fail("'{}': tensor '{}' has unknown type id {}", name_, ti.name, type_id);
    ti.type = static_cast<GgmlType>(type_id);
    if (ti.shape[0] % traits->block_values != 0)
      fail("'{}' is corrupt: tensor '{}' of type {} has rows of {} values, not a multiple of {}", name_, ti.name,
           traits->name, ti.shape[0], traits->block_values);
    ti.n_bytes = static_cast<size_t>(n_elements / traits->block_values) * traits->block_bytes;
    ti.offset = r.read<uint64_t>("a tensor offset");
    if (ti.offset % alignment_ != 0)
      fail("'{}' is corrupt: tensor '{}' offset {} is not aligned to {}", name_, ti.name, ti.offset, alignment_);
    if (tensor_index_.count(ti.name)) fail("'{}' is corrupt: tensor '{}' appears twice", name_, ti.name);
    tensor_index_[ti.name] = tensors_.size();
    tensors_.push_back(std::move(ti));
  }

  const size_t data_start = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > size_ && n_tensors > 0)
    fail("'{}' is truncated: the tensor data would start at {}, past the end ({} bytes)", name_, data_start, size_);
  for (auto& ti : tensors_) {
    const uint64_t avail = size_ > data_start ? size_ - data_start : 0;
    if (ti.offset > avail || ti.n_bytes > avail - ti.offset)
      fail("'{}' is truncated or corrupt: tensor '{}' ({} bytes at data offset {}) runs past the end of the file",
           name_, ti.name, ti.n_bytes, ti.offset);
    ti.data = base_ + data_start + ti.offset;
  }
}

const Value* File::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorInfo* File::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::optional<std::string> File::get_string_opt(const std::string& key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::STRING) fail("'{}': metadata '{}' should be a string", name_, key);
  return std::get<std::string>(v->data);
}

std::string File::get_string(const std::string& key) const {
  auto s = get_string_opt(key);
  if (!s) fail("'{}': required metadata '{}' is missing", name_, key);
  return *s;
}

std::optional<int64_t> File::get_int_opt(const std::string& key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (!is_integer(v->type)) fail("'{}': metadata '{}' should be an integer", name_, key);
  if (const auto* u = std::get_if<uint64_t>(&v->data)) {
    if (const auto x = as_int64(*u)) return x;
    fail("'{}': metadata '{}' = {} is out of range (more than 2^63 - 1)", name_, key, *u);
  }
  return std::get<int64_t>(v->data);
}

int64_t File::get_int(const std::string& key) const {
  auto x = get_int_opt(key);
  if (!x) fail("'{}': required metadata '{}' is missing", name_, key);
  return *x;
}

std::optional<double> File::get_float_opt(const std::string& key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type == ValueType::F32 || v->type == ValueType::F64) return std::get<double>(v->data);
  if (is_integer(v->type)) return static_cast<double>(*get_int_opt(key));
  fail("'{}': metadata '{}' should be a number", name_, key);
}

double File::get_float(const std::string& key) const {
  auto x = get_float_opt(key);
  if (!x) fail("'{}': required metadata '{}' is missing", name_, key);
  return *x;
}

std::optional<bool> File::get_bool_opt(const std::string& key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::BOOL) fail("'{}': metadata '{}' should be a bool", name_, key);
  return std::get<bool>(v->data);
}

const std::vector<std::string>& File::get_string_array(const std::string& key) const {
  const Value* v = find(key);
  if (!v) fail("'{}': required metadata '{}' is missing", name_, key);
  if (v->type != ValueType::ARRAY || v->elem_type != ValueType::STRING)
    fail("'{}': metadata '{}' should be an array of strings", name_, key);
  return std::get<std::vector<std::string>>(v->data);
}

const NumberArray& File::number_array(const std::string& key, bool (*accepts)(ValueType),
                                       const char* kind) const {
  const Value* v = find(key);
  if (!v) fail("'{}': required metadata '{}' is missing", name_, key);
  if (v->type != ValueType::ARRAY || !accepts(v->elem_type))
    fail("'{}': metadata '{}' should be an array of {}", name_, key, kind);
  return std::get<NumberArray>(v->data);
}

std::vector<int64_t> File::get_int_array(const std::string& key) const {
  const NumberArray& a = number_array(key, is_integer, "integers");
  const ValueType et = find(key)->elem_type;
  const size_t es = scalar_size(et);
  std::vector<int64_t> out(a.n);
  for (uint64_t i = 0; i < a.n; ++i) {
    const Scalar s = decode_scalar(a.data + i * es, et);
    const auto x = as_int64(s);
    if (!x)
      fail("'{}': item {} of metadata '{}' = {} is out of range (more than 2^63 - 1)", name_, i, key,
           std::get<uint64_t>(s));
    out[i] = *x;
  }
  return out;
}

std::vector<double> File::get_float_array(const std::string& key) const {
  const NumberArray& a =
      number_array(key, [](ValueType t) { return is_integer(t) || is_float(t); }, "numbers");
  const ValueType et = find(key)->elem_type;
  if (is_integer(et)) {
    const auto ints = get_int_array(key);  // refuses what does not fit int64, as get_float does for a scalar
    return {ints.begin(), ints.end()};
  }
  const size_t es = scalar_size(et);
  std::vector<double> out(a.n);
  for (uint64_t i = 0; i < a.n; ++i) out[i] = std::get<double>(decode_scalar(a.data + i * es, et));
  return out;
}

std::vector<bool> File::get_bool_array(const std::string& key) const {
  const NumberArray& a = number_array(key, [](ValueType t) { return t == ValueType::BOOL; }, "bools");
  std::vector<bool> out(a.n);
  for (uint64_t i = 0; i < a.n; ++i) out[i] = a.data[i] != 0;
  return out;
}

const char* value_type_name(ValueType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
                                "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "?";
}

namespace {

// The visitor of value_to_string; a namespace-scope struct because local classes cannot have member templates.
struct ValuePrinter {
  size_t max_items;
  ValueType elem_type;
  std::string operator()(int64_t x) const { return fmt::format("{}", x); }
  std::string operator()(uint64_t x) const { return fmt::format("{}", x); }
  std::string operator()(double x) const { return fmt::format("{:g}", x); }
  std::string operator()(bool x) const { return x ? "true" : "false"; }
  std::string operator()(const std::string& s) const {
    std::string t = s.size() > 60 ? s.substr(0, 57) + "..." : s;
    for (auto& c : t)
      if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    return fmt::format("\"{}\"", t);
  }
  std::string operator()(const NumberArray& a) const {
    const size_t es = scalar_size(elem_type);
    return items(a.n, [&](uint64_t i) { return std::visit(*this, decode_scalar(a.data + i * es, elem_type)); });
  }
  std::string operator()(const std::vector<std::string>& a) const {
    return items(a.size(), [&](uint64_t i) { return (*this)(a[i]); });
  }
  template <typename ItemText>
  std::string items(uint64_t n, ItemText item_text) const {
    std::string out = fmt::format("[{} items:", n);
    for (uint64_t i = 0; i < n && i < max_items; ++i) {
      out += ' ';
      out += item_text(i);
    }
    return out + (n > max_items ? " ...]" : "]");
  }
};

}  // namespace

std::string value_to_string(const Value& v, size_t max_items) {
  return std::visit(ValuePrinter{max_items, v.elem_type}, v.data);
}

}  // namespace longctx::gguf
