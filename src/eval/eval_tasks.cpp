#include "eval/eval_tasks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace longctx::eval {

namespace {

// Keys of the needles: plain words a small model tokenizes into few pieces.
const char* const kKeys[] = {
    "apple",   "river",  "falcon", "copper", "meadow", "lantern", "harbor", "violet", "glacier", "ember",
    "orchid",  "canyon", "walnut", "marble", "thunder", "saffron", "pebble", "willow", "comet",   "basil",
    "quartz",  "tundra", "mango",  "cobalt", "prairie", "beacon",  "coral",  "juniper", "nickel", "summit"};
constexpr int kNumKeys = sizeof(kKeys) / sizeof(kKeys[0]);

// Passkey filler (the passkey-retrieval test of Mohtashami and Jaggi, 2023): the same lines over and over.
const char* const kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

std::string digits(Rng& rng, int n) {
  std::string s(1, static_cast<char>('1' + rng.below(9)));  // no leading zero: the model may drop it
  for (int i = 1; i < n; ++i) s += static_cast<char>('0' + rng.below(10));
  return s;
}

std::string hex(Rng& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "0123456789abcdef"[rng.below(16)];
  return s;
}

// Distinct keys, drawn without replacement.
std::vector<std::string> draw_keys(Rng& rng, int n) {
  std::vector<int> idx(kNumKeys);
  for (int i = 0; i < kNumKeys; ++i) idx[i] = i;
  for (int i = 0; i < n; ++i) std::swap(idx[i], idx[i + rng.below(kNumKeys - i)]);
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(kKeys[idx[i]]);
  return out;
}

std::string needle_sentence(const std::string& key, const std::string& value) {
  return fmt::format("The special magic number for {} is: {}.", key, value);
}

struct Insert {
  double depth;
  std::string sentence;
  bool asked;  // its depth is the one reported
};

// Consecutive haystack sentences from a seeded start (wrapping), as many as fit in n_tokens together with the
// inserts, each insert placed at the sentence boundary nearest its depth (in tokens of the context). Returns the
// context and, through depth_placed, where the first asked insert landed.
std::string fill(const std::vector<std::string>& haystack, Rng& rng, const TokenCounter& count, int32_t n_tokens,
                 std::vector<Insert> inserts, double& depth_placed) {
  int32_t n_insert = 0;
  for (const auto& in : inserts) n_insert += count(" " + in.sentence);
  const int32_t n_fill = n_tokens - n_insert;
  if (n_fill < 0) fail("a context of {} tokens cannot hold the {} tokens of the facts; use a longer length", n_tokens, n_insert);
  std::vector<std::string> picked;
  std::vector<int32_t> cum{0};  // tokens before sentence i
  size_t at = haystack.size() > 1 ? rng.below(haystack.size()) : 0;
  for (size_t guard = 0; guard < 4 * haystack.size() + 1000000; ++guard) {
    const std::string& s = haystack[at];
    const int32_t n = count(" " + s);
    if (cum.back() + n > n_fill) break;
    picked.push_back(s);
    cum.push_back(cum.back() + n);
    at = (at + 1) % haystack.size();
  }
  std::stable_sort(inserts.begin(), inserts.end(), [](const Insert& a, const Insert& b) { return a.depth < b.depth; });
  std::string out;
  size_t next = 0;
  int32_t n_before = 0;  // tokens of context written so far
  depth_placed = -1;
  auto put = [&](const std::string& s, int32_t n) {
    if (!out.empty()) out += ' ';
    out += s;
    n_before += n;
  };
  const double total = static_cast<double>(std::max(1, cum.back()));
  for (size_t i = 0; i <= picked.size(); ++i) {
    // Inserts whose depth falls nearer this boundary than the next go here.
    while (next < inserts.size() &&
           (i == picked.size() || std::abs(inserts[next].depth * total - cum[i]) <= std::abs(inserts[next].depth * total - cum[i + 1]))) {
      if (inserts[next].asked && depth_placed < 0) depth_placed = static_cast<double>(n_before) / std::max(1, n_tokens);
      put(inserts[next].sentence, count(" " + inserts[next].sentence));
      ++next;
    }
    if (i < picked.size()) put(picked[i], cum[i + 1] - cum[i]);
  }
  if (depth_placed < 0) depth_placed = 0;
  return out;
}

}  // namespace

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

const char* task_name(Task t) {
  switch (t) {
    case Task::Needle: return "needle";
    case Task::MultiKey: return "multikey";
    case Task::MultiValue: return "multivalue";
    case Task::KvRetrieval: return "kvret";
    case Task::Passkey: return "passkey";
    case Task::Perplexity: return "ppl";
  }
  return "?";
}

Task parse_task(const std::string& name) {
  for (Task t : {Task::Needle, Task::MultiKey, Task::MultiValue, Task::KvRetrieval, Task::Passkey, Task::Perplexity})
    if (name == task_name(t)) return t;
  fail("unknown eval task '{}'; valid: needle, multikey, multivalue, kvret, passkey, ppl, all", name);
}

std::vector<Task> parse_task_list(const std::string& s) {
  std::vector<Task> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(',', start);
    const std::string name = s.substr(start, at == std::string::npos ? std::string::npos : at - start);
    if (name == "all") {
      out.insert(out.end(), {Task::Needle, Task::MultiKey, Task::MultiValue, Task::KvRetrieval, Task::Passkey,
                             Task::Perplexity});
    } else {
      const Task t = parse_task(name);
      if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
    }
    if (at == std::string::npos) break;
    start = at + 1;
  }
  return out;
}

std::vector<std::string> split_sentences(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  bool at_line_start = true;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (at_line_start) {
      // A verse reference: letters/digits then chapter:verse then a space, as `bible -f` prints.
      size_t j = i;
      while (j < text.size() && std::isalnum(static_cast<unsigned char>(text[j]))) ++j;
      const size_t colon = j;
      if (colon < text.size() && text[colon] == ':' && colon > i && std::isdigit(static_cast<unsigned char>(text[colon - 1]))) {
        size_t k = colon + 1;
        while (k < text.size() && std::isdigit(static_cast<unsigned char>(text[k]))) ++k;
        if (k > colon + 1 && k < text.size() && text[k] == ' ') {
          i = k;
          at_line_start = false;
          continue;
        }
      }
      at_line_start = false;
    }
    if (ch == '\n') at_line_start = true;
    if (std::isspace(static_cast<unsigned char>(ch))) {
      if (!cur.empty() && cur.back() != ' ') cur += ' ';
      continue;
    }
    cur += ch;
    const bool end = (ch == '.' || ch == '?' || ch == '!') &&
                     (i + 1 == text.size() || std::isspace(static_cast<unsigned char>(text[i + 1])));
    if (end) {
      out.push_back(cur);
      cur.clear();
    }
  }
  while (!cur.empty() && cur.back() == ' ') cur.pop_back();
  if (!cur.empty()) out.push_back(cur);
  if (out.empty()) fail("the haystack holds no text");
  return out;
}

std::vector<int32_t> parse_length_list(const std::string& s) {
  std::vector<int32_t> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(',', start);
    std::string e = s.substr(start, at == std::string::npos ? std::string::npos : at - start);
    int64_t mul = 1;
    if (!e.empty() && (e.back() == 'k' || e.back() == 'K')) {
      mul = 1024;
      e.pop_back();
    }
    if (e.empty() || e.size() > 9 || !std::all_of(e.begin(), e.end(), [](char c) { return c >= '0' && c <= '9'; }))
      fail("bad length '{}' in --lengths '{}'; give tokens like 1k,2k,4096", s.substr(start, at - start), s);
    const int64_t v = std::stoll(e) * mul;
    if (v <= 0 || v > (1 << 30)) fail("length '{}' in --lengths is out of range", s.substr(start, at - start));
    out.push_back(static_cast<int32_t>(v));
    if (at == std::string::npos) break;
    start = at + 1;
  }
  return out;
}

std::vector<double> parse_depth_list(const std::string& s) {
  std::vector<double> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(',', start);
    const std::string e = s.substr(start, at == std::string::npos ? std::string::npos : at - start);
    char* end = nullptr;
    const double v = e.empty() ? NAN : std::strtod(e.c_str(), &end);
    if (e.empty() || end != e.c_str() + e.size() || !(v >= 0 && v <= 1))
      fail("bad depth '{}' in --depths '{}'; give fractions of the context in [0, 1] like 0,0.5,1", e, s);
    out.push_back(v);
    if (at == std::string::npos) break;
    start = at + 1;
  }
  return out;
}

Case make_case(Task task, int32_t length, double depth, uint64_t seed, const std::vector<std::string>& haystack,
               const TokenCounter& count, const CaseParams& p) {
  if (haystack.empty()) fail("the haystack holds no text");
  Case c;
  c.task = task;
  c.length = length;
  c.depth = depth;
  c.seed = seed;
  // One stream per (task, length, depth, seed): adding a depth or a length leaves the other cases as they were.
  Rng rng(seed * 0x100000001b3ull ^ (static_cast<uint64_t>(task) << 56) ^ (static_cast<uint64_t>(length) << 20) ^
          static_cast<uint64_t>(std::llround(depth * 1e6)));
  std::vector<Insert> inserts;
  switch (task) {
    case Task::Needle: {
      const std::string key = draw_keys(rng, 1)[0], value = digits(rng, 7);
      inserts.push_back({depth, needle_sentence(key, value), true});
      c.question = fmt::format("What is the special magic number for {} mentioned in the provided text?", key);
      c.answer_prefix = fmt::format("The special magic number for {} mentioned in the provided text is", key);
      c.expected = {value};
      break;
    }
    case Task::MultiKey: {
      // RULER's multi-key needle: distractor needles under other keys, one asked.
      const auto keys = draw_keys(rng, 4);
      for (size_t i = 0; i < keys.size(); ++i) {
        const std::string value = digits(rng, 7);
        const double d = i == 0 ? depth : static_cast<double>(rng.below(1001)) / 1000.0;
        inserts.push_back({d, needle_sentence(keys[i], value), i == 0});
        if (i == 0) c.expected = {value};
      }
      c.question = fmt::format("What is the special magic number for {} mentioned in the provided text?", keys[0]);
      c.answer_prefix = fmt::format("The special magic number for {} mentioned in the provided text is", keys[0]);
      break;
    }
    case Task::MultiValue: {
      const std::string key = draw_keys(rng, 1)[0];
      for (int i = 0; i < 3; ++i) {
        const std::string value = digits(rng, 7);
        const double d = i == 0 ? depth : static_cast<double>(rng.below(1001)) / 1000.0;
        inserts.push_back({d, needle_sentence(key, value), i == 0});
        c.expected.push_back(value);
      }
      c.question = fmt::format("What are all the special magic numbers for {} mentioned in the provided text?", key);
      c.answer_prefix = fmt::format("The special magic numbers for {} mentioned in the provided text are", key);
      break;
    }
    case Task::KvRetrieval: {
      // RULER's key-value retrieval: the context is the list itself, no haystack; the asked pair at the depth.
      std::vector<std::pair<std::string, std::string>> pairs;
      int32_t n = count("JSON data:\n{}");
      const int32_t n_budget = p.n_context_tokens;
      while (true) {
        std::pair<std::string, std::string> kv{hex(rng, 8), hex(rng, 8)};
        const int32_t k = count(fmt::format("\"{}\": \"{}\", ", kv.first, kv.second));
        if (n + k > n_budget) break;
        n += k;
        pairs.push_back(std::move(kv));
      }
      if (pairs.empty()) fail("a context of {} tokens cannot hold one key-value pair", n_budget);
      const size_t asked = std::min(pairs.size() - 1, static_cast<size_t>(std::llround(depth * (pairs.size() - 1))));
      c.context = "JSON data:\n{";
      for (size_t i = 0; i < pairs.size(); ++i)
        c.context += fmt::format("{}\"{}\": \"{}\"", i ? ", " : "", pairs[i].first, pairs[i].second);
      c.context += "}";
      c.depth_placed = pairs.size() > 1 ? static_cast<double>(asked) / (pairs.size() - 1) : 0;
      c.question = fmt::format("Extract the value corresponding to the key \"{}\" from the JSON data above.", pairs[asked].first);
      c.answer_prefix = fmt::format("The value associated with the key \"{}\" is", pairs[asked].first);
      c.expected = {pairs[asked].second};
      return c;
    }
    case Task::Passkey: {
      const std::string key = digits(rng, 5);
      inserts.push_back({depth, fmt::format("The pass key is {}. Remember it. {} is the pass key.", key, key), true});
      const std::vector<std::string> filler = split_sentences(kFiller);
      c.context = fill(filler, rng, count, p.n_context_tokens, inserts, c.depth_placed);
      c.question = "What is the pass key?";
      c.answer_prefix = "The pass key is";
      c.expected = {key};
      return c;
    }
    case Task::Perplexity: {
      // The prefix and what follows it, one run of consecutive sentences; the runner cuts it in tokens.
      c.context = fill(haystack, rng, count, p.n_context_tokens + p.n_score_tokens, {}, c.depth_placed);
      c.depth_placed = 0;
      return c;
    }
  }
  c.context = fill(haystack, rng, count, p.n_context_tokens, inserts, c.depth_placed);
  return c;
}

bool score_answer(const std::vector<std::string>& expected, std::string_view answer) {
  if (expected.empty()) return false;
  auto is_word = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) != 0; };
  for (const std::string& e : expected) {
    bool found = false;
    for (size_t at = answer.find(e); at != std::string_view::npos; at = answer.find(e, at + 1)) {
      const bool left_ok = at == 0 || !is_word(answer[at - 1]);
      const bool right_ok = at + e.size() == answer.size() || !is_word(answer[at + e.size()]);
      if (left_ok && right_ok) {
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  return true;
}

std::string resolve_budget(const std::string& spec, int32_t length) {
  std::string out;
  size_t start = 0;
  const std::string key = "budget=";
  while (true) {
    const size_t at = spec.find(key, start);
    if (at == std::string::npos) {
      out += spec.substr(start);
      return out;
    }
    const size_t v0 = at + key.size();
    size_t v1 = v0;
    while (v1 < spec.size() && spec[v1] != ',' && spec[v1] != '+') ++v1;
    const std::string v = spec.substr(v0, v1 - v0);
    out += spec.substr(start, v0 - start);
    const size_t slash = v.find('/');
    if (slash != std::string::npos) {
      const std::string num = v.substr(0, slash), den = v.substr(slash + 1);
      auto all_digits = [](const std::string& s) {
        return !s.empty() && s.size() < 9 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
      };
      if (!all_digits(num) || !all_digits(den) || std::stoll(den) == 0)
        fail("bad relative budget '{}' in --kv '{}'; write it like budget=1/4", v, spec);
      out += std::to_string(std::max<int64_t>(1, static_cast<int64_t>(length) * std::stoll(num) / std::stoll(den)));
    } else {
      out += v;
    }
    start = v1;
  }
}

}  // namespace longctx::eval
