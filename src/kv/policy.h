// A KV policy decides which tokens each (layer, kv-head) keeps and in which format (DESIGN.md, "The KV cache").
// It is a small object with hooks the engine calls; the store does the compaction and frees the pages. This
// issue ships only the full cache; token eviction, head budgets and packed formats plug in here as new files
// under kv/ with no change to the model code.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/kv_format.h"
#include "kv/kv_store.h"

namespace longctx::kv {

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  virtual std::string describe() const = 0;
  // The format new pages are written in.
  virtual KvFormat page_format() const = 0;
  // The format full pages are packed into (the same: never packed).
  virtual KvFormat sealed_format() const { return page_format(); }
  // Called once the whole prompt is in the cache.
  virtual void after_prefill(KvSequence& seq) {}
  // Called after each generated token has been appended.
  virtual void after_decode_step(KvSequence& seq) {}
};

// Keeps every token of every head at full precision.
class FullPolicy final : public KvPolicy {
 public:
  explicit FullPolicy(KvFormat format) : format_(format) {}
  std::string describe() const override;
  KvFormat page_format() const override { return format_; }

 private:
  KvFormat format_;
};

// Parses a --kv spec ("full", "full:type=f32"); a bad spec gets an Error naming the bad part and what is valid.
std::unique_ptr<KvPolicy> make_kv_policy(const std::string& spec);

}  // namespace longctx::kv
