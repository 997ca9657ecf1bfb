#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <set>
#include <string>

namespace helios {

// One object of a JSON config file ("scheduler", "constraints", or the root itself): typed
// getters that name the full dotted key in their errors (helios::Error, kInvalidArgument) and
// leave the target untouched when the key is absent, plus a check that no key is left unread.
// Shared by the server config and the SLO file so both report errors the same way. Values in
// messages are json_excerpt()s: bounded, whatever the document holds.
class JsonSection {
 public:
  enum class Null { kAbsent, kValue };

  // `name` empty: the root object itself. A missing or null section reads as empty; any other
  // non-object fails naming it. With Null::kAbsent a JSON null value counts as absent;
  // with Null::kValue it is a value, which the typed getters reject as the wrong type.
  JsonSection(const nlohmann::json& root, std::string name, Null null = Null::kAbsent);

  std::string path(const std::string& key) const;
  // The value of `key` (a JSON null per the Null policy), or nullptr when absent; marks the key
  // as known to check_unknown().
  const nlohmann::json* find(const std::string& key);

  // Each returns whether the key was present (and `out` set).
  // An integer: a float, or an unsigned value past INT64_MAX, fails naming the key.
  bool integer(const std::string& key, int64_t& out);
  // The same within [min, max]; out of range fails naming the key, the range and the value.
  bool integer(const std::string& key, int64_t& out, int64_t min, int64_t max);
  bool number(const std::string& key, double& out);  // finite
  bool string(const std::string& key, std::string& out);
  bool boolean(const std::string& key, bool& out);

  // Fails naming the first key of the object that no getter or find() asked for.
  void check_unknown() const;

  [[noreturn]] static void fail(const std::string& key, const std::string& what);

 private:
  std::string name_;
  const nlohmann::json* object_ = nullptr;
  Null null_;
  std::set<std::string> read_;
};

}  // namespace helios
