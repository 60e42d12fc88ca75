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

// A metadata value. Arrays of numbers are widened (integers to int64, floats to double) and arrays of strings
// kept as strings; `elem_type` keeps the type as written.
struct Value {
  ValueType type = ValueType::U8;
  ValueType elem_type = ValueType::U8;  // for arrays
  std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<int64_t>, std::vector<double>,
               std::vector<std::string>, std::vector<bool>>
      data;
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

  // Typed getters: throw Error when the key is missing (no default) or has the wrong type.
  std::string get_string(const std::string& key) const;
  std::optional<std::string> get_string_opt(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  std::optional<int64_t> get_int_opt(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::optional<double> get_float_opt(const std::string& key) const;
  std::optional<bool> get_bool_opt(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const;

 private:
  File() = default;
  void parse_all();

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
