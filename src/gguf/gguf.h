// GGUF reader, versions 2 and 3: memory-mapped, every offset, size and count checked against the file before
// use. Layout (little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, the key/value pairs, the
// tensor infos, padding to `general.alignment` (default 32), then the tensor data.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/ggml_type.h"
#include "core/mapped_file.h"

namespace longctx::gguf {

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};

// An array of numbers or bools as the file writes it: `n` little-endian items of the value's `elem_type`,
// unaligned, inside the bytes the File was parsed from (so it lives as long as the File). The getters decode it;
// kept as written, a file's arrays cost no memory beyond the file (widening each u8 to an int64 at parse would
// cost 8 bytes for each byte of the file).
struct NumberArray {
  const uint8_t* data = nullptr;
  uint64_t n = 0;
};

// A metadata value: scalars widened (integers to int64, U64 kept unsigned, floats to double), arrays of numbers
// as written, arrays of strings as strings; `elem_type` keeps an array's item type.
struct Value {
  ValueType type = ValueType::U8;
  ValueType elem_type = ValueType::U8;  // for arrays
  std::variant<int64_t, uint64_t, double, bool, std::string, NumberArray, std::vector<std::string>> data;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // ggml order: shape[0] is the innermost (contiguous) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  // from the start of the data section
  size_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping
  int64_t n_elements() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

class File {
 public:
  // Throws Error naming the file and the fault: not GGUF, truncated, an offset past the end, an unknown type.
  static std::unique_ptr<File> open(const std::string& path);
  // Parses a buffer already in memory (the fuzzer's entry); `data` must outlive the File.
  static std::unique_ptr<File> parse(const uint8_t* data, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::string& path() const { return name_; }
  size_t file_size() const { return size_; }

  const std::map<std::string, Value>& metadata() const { return kv_; }
  const Value* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

  // Typed getters: throw Error when the key is missing (no default) or has the wrong type. Integers, alone or
  // in arrays, must fit int64: a U64 above INT64_MAX is refused, never wrapped.
  std::string get_string(const std::string& key) const;
  std::optional<std::string> get_string_opt(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  std::optional<int64_t> get_int_opt(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::optional<double> get_float_opt(const std::string& key) const;
  std::optional<bool> get_bool_opt(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;  // integer arrays widen to double
  std::vector<bool> get_bool_array(const std::string& key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const;

 private:
  File() = default;
  void parse_all();
  // The array of numbers under `key`, whose item type `accepts` takes; Error (naming `kind`) otherwise.
  const NumberArray& number_array(const std::string& key, bool (*accepts)(ValueType), const char* kind) const;

  std::unique_ptr<MappedFile> map_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Short text of a value for `info` (arrays shown by length and first items).
std::string value_to_string(const Value& v, size_t max_items = 8);
const char* value_type_name(ValueType t);

}  // namespace longctx::gguf
