// safetensors reading (mmap, validated header) and atomic writing.
// Format: docs/formats/safetensors.md.
#include "finmoe/safetensors.h"
#include "finmoe/config.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "core/tensor_data_check.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

// The Python/Rust library refuses headers above 100 MB; so do we, so a
// corrupt length cannot make us parse a huge buffer.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string json_type(const nlohmann::json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "float";
  return v.type_name();
}

// Non-negative integer from JSON; `what` names it in the error.
uint64_t as_uint(const nlohmann::json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) throw Error(what + " must be non-negative, got " + v.dump());
  throw Error(what + " must be an integer, got " + json_type(v));
}

}  // namespace

size_t dtype_size(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  throw Error("invalid DType value " + std::to_string(int(dtype)));
}

std::string_view dtype_name(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  throw Error("invalid DType value " + std::to_string(int(dtype)));
}

DType dtype_from_name(std::string_view name) {
  std::string known;
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.dtype;
    known += (known.empty() ? "" : ", ") + std::string(d.name);
  }
  throw Error("unknown dtype '" + std::string(name) + "' (known: " + known + ")");
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------- reading

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  auto fail = [&](const std::string& msg) -> Error { return Error(path + ": " + msg); };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw_errno("cannot stat", path);
  }
  const uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw fail("file is " + std::to_string(file_size) +
               " bytes, shorter than the 8-byte header length of a safetensors file");
  }
  // Private + writable: pages are copy-on-write, the file never changes.
  void* map = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw_errno("cannot mmap", path);
  f->map_ = map;  // unmapped by the destructor from here on
  f->map_size_ = file_size;
  auto* base = static_cast<uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
  if (header_len > file_size - 8)
    throw fail("header length " + std::to_string(header_len) + " is larger than the " +
               std::to_string(file_size - 8) + " bytes after the length field");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
               std::to_string(kMaxHeaderBytes) + " bytes");
  const uint64_t data_size = file_size - 8 - header_len;
  uint8_t* data = base + 8 + header_len;

  nlohmann::json header;
  try {
    header = parse_json({reinterpret_cast<const char*>(base + 8), size_t(header_len)}, "header");
  } catch (const JsonError& e) {
    throw fail(e.what());
  }
  // JSON whitespace around the object is accepted, as the reference library
  // (0.8) does: the writers pad with spaces to align the data buffer.
  if (!header.is_object()) throw fail("header must be a JSON object, got " + json_type(header));

  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  std::vector<TensorView> tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw fail("__metadata__ must be an object of strings, got " + json_type(entry));
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw fail("__metadata__ value of '" + k + "' must be a string, got " + json_type(v));
        f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) throw fail(where + " entry must be an object, got " + json_type(entry));
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(key)) throw fail(where + " has no '" + key + "'");
    const auto& jdtype = entry["dtype"];
    const auto& jshape = entry["shape"];
    const auto& joffsets = entry["data_offsets"];
    if (!jdtype.is_string())
      throw fail(where + ": 'dtype' must be a string, got " + json_type(jdtype));
    if (!jshape.is_array())
      throw fail(where + ": 'shape' must be an array, got " + json_type(jshape));
    if (!joffsets.is_array() || joffsets.size() != 2)
      throw fail(where + ": 'data_offsets' must be an array [begin, end], got " + joffsets.dump());

    TensorView t;
    t.name = name;
    try {
      t.dtype = dtype_from_name(jdtype.get<std::string>());
      uint64_t numel = 1;
      for (size_t i = 0; i < jshape.size(); ++i) {
        uint64_t d = as_uint(jshape[i], "'shape[" + std::to_string(i) + "]'");
        if (d > uint64_t(std::numeric_limits<int64_t>::max()))
          throw Error("'shape[" + std::to_string(i) + "]' is too large");
        t.shape.push_back(int64_t(d));
        if (__builtin_mul_overflow(numel, d, &numel))
          throw Error("shape " + jshape.dump() + " has too many elements");
      }
      uint64_t begin = as_uint(joffsets[0], "'data_offsets[0]'");
      uint64_t end = as_uint(joffsets[1], "'data_offsets[1]'");
      if (begin > end)
        throw Error("data_offsets begin " + std::to_string(begin) + " > end " +
                    std::to_string(end));
      if (end > data_size)
        throw Error("data_offsets end " + std::to_string(end) + " is beyond the data buffer of " +
                    std::to_string(data_size) + " bytes");
      uint64_t nbytes = 0;
      bool overflow = __builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &nbytes);
      if (overflow || nbytes != end - begin)
        throw Error("shape " + jshape.dump() + " of " + std::string(dtype_name(t.dtype)) +
                    " needs " + (overflow ? std::string("too many") : std::to_string(nbytes)) +
                    " bytes but data_offsets span " + std::to_string(end - begin));
      t.data = data + begin;
      t.nbytes = size_t(nbytes);
      ranges.push_back({begin, end, tensors.size()});
    } catch (const Error& e) {
      throw fail(where + ": " + e.what());
    }
    tensors.push_back(std::move(t));
  }

  // File order; an empty tensor sorts before a non-empty one at the same offset.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The tensors tile the data buffer exactly, as the reference library
  // requires: a gap or a header length off by a byte (padding dropped) would
  // otherwise read every later tensor from the wrong bytes.
  uint64_t covered = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const std::string& name = tensors[ranges[i].index].name;
    if (ranges[i].begin < covered)
      throw fail("tensors '" + tensors[ranges[i - 1].index].name + "' and '" + name +
                 "' overlap in the data buffer");
    if (ranges[i].begin > covered)
      throw fail("tensor '" + name + "' begins at data offset " + std::to_string(ranges[i].begin) +
                 ", leaving bytes " + std::to_string(covered) + ".." +
                 std::to_string(ranges[i].begin) + " of the data buffer to no tensor");
    covered = ranges[i].end;
  }
  if (covered != data_size)
    throw fail("the tensors cover " + std::to_string(covered) + " of the " +
               std::to_string(data_size) +
               " bytes after the header (header length or data_offsets wrong, or trailing bytes)");
  f->tensors_.reserve(tensors.size());
  for (const Range& r : ranges) f->tensors_.push_back(std::move(tensors[r.index]));
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

// ---------------------------------------------------------------- writing

void check_tensor_data(const std::string& path, const std::vector<TensorData>& tensors,
                       bool require_data) {
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.name.empty() || t.name == "__metadata__")
      throw Error(path + ": invalid tensor name '" + t.name + "'");
    if (!names.insert(t.name).second) throw Error(where + " is given twice");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw Error(where + ": negative dimension " + std::to_string(d));
      if (__builtin_mul_overflow(numel, uint64_t(d), &numel))
        throw Error(where + ": too many elements");
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &nbytes) ||
        nbytes != t.nbytes)
      throw Error(where + ": nbytes " + std::to_string(t.nbytes) + " != numel " +
                  std::to_string(numel) + " x " + std::to_string(dtype_size(t.dtype)) +
                  " bytes of " + std::string(dtype_name(t.dtype)));
    if (require_data && t.nbytes > 0 && t.data == nullptr) throw Error(where + ": data is null");
  }
}

std::string safetensors_header(const std::vector<TensorData>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the caller's order in the header, __metadata__ first.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string json = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned (as safetensors does).
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint8_t(uint64_t(json.size()) >> (8 * i)));
  return out + json;
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_tensor_data(path, tensors);
  AtomicFile out(path);
  out.write(safetensors_header(tensors, metadata));
  for (const auto& t : tensors) out.write(t.data, t.nbytes);
  out.commit();
}

}  // namespace finmoe
