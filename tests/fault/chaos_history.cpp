#include "chaos_history.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace xcpipe::chaos {

nlohmann::json ToJson(const HistoryEvent& e) {
  nlohmann::json j{{"t_ms", e.t_ms}, {"client", e.client}, {"request", e.request}, {"kind", e.kind}};
  if (e.kind == "submit") {
    j["prompt_key"] = e.prompt_key;
    j["max_new_tokens"] = e.max_new_tokens;
    j["greedy"] = e.greedy;
    j["phase"] = e.phase;
  }
  if (e.offset != 0 || !e.tokens.empty()) {
    j["offset"] = e.offset;
    j["tokens"] = e.tokens;
  }
  if (!e.all_tokens.empty()) j["all_tokens"] = e.all_tokens;
  if (!e.finish_reason.empty()) j["finish_reason"] = e.finish_reason;
  if (!e.error.empty()) j["error"] = e.error;
  if (e.retry_after_ms != 0) j["retry_after_ms"] = e.retry_after_ms;
  return j;
}

HistoryEvent EventFromJson(const nlohmann::json& j) {
  HistoryEvent e;
  e.t_ms = j.value("t_ms", 0.0);
  e.client = j.value("client", "");
  e.request = j.value("request", uint64_t{0});
  e.kind = j.value("kind", "");
  e.prompt_key = j.value("prompt_key", "");
  e.max_new_tokens = j.value("max_new_tokens", 0u);
  e.greedy = j.value("greedy", true);
  e.phase = j.value("phase", "");
  e.offset = j.value("offset", 0u);
  e.tokens = j.value("tokens", std::vector<int64_t>{});
  e.all_tokens = j.value("all_tokens", std::vector<int64_t>{});
  e.finish_reason = j.value("finish_reason", "");
  e.error = j.value("error", "");
  e.retry_after_ms = j.value("retry_after_ms", 0u);
  return e;
}

bool ReadHistory(const std::string& path, std::vector<HistoryEvent>& out, std::string& error) {
  std::ifstream in(path);
  if (!in) {
    error = "cannot read " + path;
    return false;
  }
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      error = path + ":" + std::to_string(line_number) + ": not a JSON object";
      return false;
    }
    out.push_back(EventFromJson(j));
  }
  return true;
}

const std::set<std::string>& DocumentedFailureReasons() {
  static const std::set<std::string> reasons = {"ResourceExhausted", "Unavailable", "DeadlineExceeded", "Aborted",
                                                "Cancelled"};
  return reasons;
}

nlohmann::json CheckResult::ToJson() const {
  return {{"requests", requests},
          {"completed", completed},
          {"failed", failed},
          {"duplicated", duplicated},
          {"lost", lost},
          {"changed", changed},
          {"differing", differing},
          {"redelivered_events", redelivered_events},
          {"repeated_endings", repeated_endings},
          {"liveness_requests", liveness_requests},
          {"liveness_completed", liveness_completed},
          {"tokens_checked", tokens_checked},
          {"tokens_identical", tokens_identical()},
          {"violations", violations}};
}

namespace {

std::string Show(const std::vector<int64_t>& v, size_t from = 0, size_t count = 8) {
  std::ostringstream s;
  s << "[";
  for (size_t i = from; i < v.size() && i < from + count; ++i) s << (i > from ? "," : "") << v[i];
  if (v.size() > from + count) s << ",...";
  s << "]";
  return s.str();
}

bool IsEnding(const HistoryEvent& e) { return e.kind == "done" || e.kind == "error"; }
bool IsFailure(const HistoryEvent& e) { return e.kind == "error" || !e.error.empty(); }

// Two endings say the same thing: same outcome, reason and tokens.
bool SameEnding(const HistoryEvent& a, const HistoryEvent& b) {
  return IsFailure(a) == IsFailure(b) && a.finish_reason == b.finish_reason &&
         (IsFailure(a) || a.all_tokens == b.all_tokens);
}

// How `got` departs from `want` (both greedy token lists), for the report.
std::string Classify(const std::vector<int64_t>& got, const std::vector<int64_t>& want, bool& duplicate) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  duplicate = false;
  auto suffix_equal = [](const std::vector<int64_t>& a, size_t ai, const std::vector<int64_t>& b, size_t bi) {
    const size_t n = std::min(a.size() - std::min(a.size(), ai), b.size() - std::min(b.size(), bi));
    return std::equal(a.begin() + static_cast<std::ptrdiff_t>(std::min(a.size(), ai)),
                      a.begin() + static_cast<std::ptrdiff_t>(std::min(a.size(), ai) + n),
                      b.begin() + static_cast<std::ptrdiff_t>(std::min(b.size(), bi)));
  };
  std::ostringstream s;
  if (i == got.size() || i == want.size()) {
    s << got.size() << " tokens where the fault-free run has " << want.size();
  } else if (i > 0 && got[i] == got[i - 1] && suffix_equal(got, i + 1, want, i)) {
    duplicate = true;
    s << "token " << got[i] << " delivered twice (positions " << i - 1 << " and " << i << ")";
  } else if (suffix_equal(got, i, want, i + 1)) {
    s << "token " << want[i] << " at position " << i << " missing";
  } else {
    s << "token at position " << i << " is " << got[i] << ", the fault-free run has " << want[i];
  }
  s << "; got " << Show(got, i > 2 ? i - 2 : 0) << ", fault-free " << Show(want, i > 2 ? i - 2 : 0) << " (from "
    << (i > 2 ? i - 2 : 0) << ")";
  return s.str();
}

}  // namespace

CheckResult CheckHistory(const std::vector<HistoryEvent>& history, const CheckOptions& options) {
  CheckResult r;
  // Requests in the order they were submitted; events per request in the order seen.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const HistoryEvent*>> events;
  for (const auto& e : history) {
    const std::string key = e.client + "#" + std::to_string(e.request);
    if (!events.count(key)) order.push_back(key);
    events[key].push_back(&e);
  }
  auto violation = [&](const std::string& key, const HistoryEvent* submit, const std::string& what) {
    std::string where = "request " + key;
    if (submit) where += " (prompt " + submit->prompt_key + ", " + submit->phase + ")";
    r.violations.push_back(where + ": " + what);
  };
  for (const auto& key : order) {
    const auto& list = events[key];
    const HistoryEvent* submit = nullptr;
    for (const auto* e : list)
      if (e->kind == "submit" && !submit) submit = e;
    if (!submit) {
      violation(key, nullptr, "events for a request that was never submitted");
      continue;
    }
    ++r.requests;
    const bool liveness = submit->phase == "liveness";
    if (liveness) ++r.liveness_requests;
    std::map<size_t, int64_t> delivered;  // position -> token, every token ever delivered
    const HistoryEvent* ending = nullptr;
    bool changed = false, beyond_ending = false;
    auto place = [&](const HistoryEvent& e, size_t offset, const std::vector<int64_t>& tokens, bool after_ending) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        const size_t pos = offset + i;
        auto it = delivered.find(pos);
        if (it == delivered.end()) {
          if (after_ending) {
            if (!beyond_ending)
              violation(key, submit, "token " + std::to_string(tokens[i]) + " delivered at position " +
                                         std::to_string(pos) + " after the request ended (t=" +
                                         std::to_string(static_cast<int64_t>(e.t_ms)) + " ms)");
            beyond_ending = true;
            continue;
          }
          delivered[pos] = tokens[i];
        } else if (it->second != tokens[i]) {
          if (!changed)
            violation(key, submit, "token at position " + std::to_string(pos) + " changed after delivery: " +
                                       std::to_string(it->second) + " then " + std::to_string(tokens[i]) + " (t=" +
                                       std::to_string(static_cast<int64_t>(e.t_ms)) + " ms)");
          changed = true;
        }
      }
    };
    bool redelivered = false;
    for (const auto* e : list) {
      if (e->kind == "submit" || e->kind == "accepted" || e->kind == "retry" || e->kind == "gave_up") continue;
      if (e->kind != "tokens" && !IsEnding(*e)) {
        violation(key, submit, "unknown event kind '" + e->kind + "'");
        continue;
      }
      if (ending && IsEnding(*e)) {
        if (SameEnding(*ending, *e)) {
          ++r.repeated_endings;
        } else {
          violation(key, submit, "ended twice: first " + (IsFailure(*ending) ? "failed (" + ending->finish_reason + ")"
                                                                           : "completed (" + ending->finish_reason + ")") +
                                     ", then " + (IsFailure(*e) ? "failed (" + e->finish_reason + ")"
                                                                : "completed (" + e->finish_reason + ")") +
                                     " at t=" + std::to_string(static_cast<int64_t>(e->t_ms)) + " ms");
        }
      }
      for (size_t i = 0; i < e->tokens.size() && !redelivered; ++i)
        if (delivered.count(e->offset + i)) redelivered = true;
      if (redelivered) {
        ++r.redelivered_events;
        redelivered = false;
      }
      place(*e, e->offset, e->tokens, ending != nullptr);
      if (IsEnding(*e) && !IsFailure(*e)) place(*e, 0, e->all_tokens, ending != nullptr);
      if (IsEnding(*e) && !ending) ending = e;
    }
    if (changed) ++r.changed;
    if (!ending) {
      ++r.lost;
      std::string last = list.back()->kind;
      violation(key, submit, "never ended (last event: " + last + " at t=" +
                                 std::to_string(static_cast<int64_t>(list.back()->t_ms)) + " ms)");
      continue;
    }
    if (IsFailure(*ending)) {
      ++r.failed[ending->finish_reason.empty() ? "(none)" : ending->finish_reason];
      if (!options.allowed_reasons.count(ending->finish_reason))
        violation(key, submit, "failed with a reason outside the documented set: '" + ending->finish_reason + "' (" +
                                   ending->error + ")");
      else if (ending->error.empty())
        violation(key, submit, "failed (" + ending->finish_reason + ") without a stated reason");
      if (liveness) violation(key, submit, "the liveness batch was not served: " + ending->finish_reason + ": " +
                                               ending->error);
      continue;
    }
    ++r.completed;
    // What the client ends with: the final list, or what streamed when the final list is absent.
    std::vector<int64_t> final_tokens = ending->all_tokens;
    if (final_tokens.empty())
      for (size_t i = 0; delivered.count(i); ++i) final_tokens.push_back(delivered[i]);
    r.tokens_checked += final_tokens.size();
    if (!delivered.empty() && delivered.rbegin()->first >= final_tokens.size() && !beyond_ending)
      violation(key, submit, "streamed " + std::to_string(delivered.rbegin()->first + 1) +
                                 " tokens but the final list has " + std::to_string(final_tokens.size()));
    bool duplicate = final_tokens.size() > submit->max_new_tokens;
    if (duplicate)
      violation(key, submit, "delivered " + std::to_string(final_tokens.size()) + " tokens, more than the " +
                                 std::to_string(submit->max_new_tokens) + " asked for");
    if (submit->greedy) {
      auto ref = options.reference.find(submit->prompt_key);
      if (ref == options.reference.end()) {
        violation(key, submit, "no fault-free reference for this prompt");
      } else if (final_tokens != ref->second) {
        bool dup = false;
        const std::string how = Classify(final_tokens, ref->second, dup);
        duplicate = duplicate || dup;
        ++r.differing;
        violation(key, submit, "tokens differ from the fault-free run: " + how);
      } else if (liveness) {
        ++r.liveness_completed;
      }
    } else if (liveness) {
      ++r.liveness_completed;
    }
    if (duplicate) ++r.duplicated;
  }
  if (options.require_liveness && r.liveness_requests == 0)
    r.violations.push_back("no liveness batch in the history: the cluster was not shown to serve after the final heal");
  return r;
}

}  // namespace xcpipe::chaos
