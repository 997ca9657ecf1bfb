#include "helios/common/json_section.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "helios/common/error.h"
#include "helios/common/json_limits.h"

namespace helios {

using nlohmann::json;

void JsonSection::fail(const std::string& key, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, key + ": " + what);
}

JsonSection::JsonSection(const json& root, std::string name, Null null)
    : name_(std::move(name)), null_(null) {
  if (name_.empty()) {
    object_ = &root;
    return;
  }
  const auto it = root.find(name_);
  if (it == root.end() || it->is_null()) return;
  if (!it->is_object()) fail(name_, "must be an object");
  object_ = &*it;
}

std::string JsonSection::path(const std::string& key) const {
  return name_.empty() ? key : name_ + "." + key;
}

const json* JsonSection::find(const std::string& key) {
  read_.insert(key);
  if (object_ == nullptr) return nullptr;
  const auto it = object_->find(key);
  if (it == object_->end() || (it->is_null() && null_ == Null::kAbsent)) return nullptr;
  return &*it;
}

bool JsonSection::integer(const std::string& key, int64_t& out) {
  const json* v = find(key);
  if (v == nullptr) return false;
  if (!(v->is_number_integer() || v->is_number_unsigned())) {
    fail(path(key), "must be an integer, got " + json_excerpt(*v));
  }
  // get<int64_t>() would wrap an unsigned value past INT64_MAX into a negative one.
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(path(key), std::to_string(v->get<uint64_t>()) + " is out of range");
  }
  out = v->get<int64_t>();
  return true;
}

bool JsonSection::integer(const std::string& key, int64_t& out, int64_t min, int64_t max) {
  int64_t value = 0;
  if (!integer(key, value)) return false;
  if (value < min || value > max) {
    fail(path(key), "must be in [" + std::to_string(min) + ", " + std::to_string(max) +
                        "], got " + std::to_string(value));
  }
  out = value;
  return true;
}

bool JsonSection::number(const std::string& key, double& out) {
  const json* v = find(key);
  if (v == nullptr) return false;
  if (!v->is_number() || !std::isfinite(v->get<double>())) {
    fail(path(key), "must be a number, got " + json_excerpt(*v));
  }
  out = v->get<double>();
  return true;
}

bool JsonSection::string(const std::string& key, std::string& out) {
  const json* v = find(key);
  if (v == nullptr) return false;
  if (!v->is_string()) fail(path(key), "must be a string, got " + json_excerpt(*v));
  out = v->get<std::string>();
  return true;
}

bool JsonSection::boolean(const std::string& key, bool& out) {
  const json* v = find(key);
  if (v == nullptr) return false;
  if (!v->is_boolean()) fail(path(key), "must be true or false, got " + json_excerpt(*v));
  out = v->get<bool>();
  return true;
}

void JsonSection::check_unknown() const {
  if (object_ == nullptr) return;
  for (const auto& [key, value] : object_->items()) {
    if (!read_.contains(key)) fail(path(key), "unknown key");
  }
}

}  // namespace helios
