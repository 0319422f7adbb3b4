#include "xcpipe/checkpoint/torch_pickle.h"

#include <zip.h>

#include <cstring>
#include <fstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace xcpipe::checkpoint {

int64_t TorchTensorRecord::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t TorchTensorRecord::bytes() const { return static_cast<uint64_t>(numel()) * DTypeBytes(dtype); }

bool TorchTensorRecord::contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

namespace {

// The GLOBALs a state_dict pickle may name. Anything else is refused before use.
constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr const char* kRebuildParameterWithState = "torch._utils._rebuild_parameter_with_state";

struct StorageClass {
  const char* name;
  DType dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"torch.FloatStorage", DType::kF32},  {"torch.HalfStorage", DType::kF16}, {"torch.BFloat16Storage", DType::kBF16},
    {"torch.DoubleStorage", DType::kF64}, {"torch.LongStorage", DType::kI64}, {"torch.IntStorage", DType::kI32},
    {"torch.ShortStorage", DType::kI16},  {"torch.CharStorage", DType::kI8},  {"torch.ByteStorage", DType::kU8},
    {"torch.BoolStorage", DType::kBool},
};

std::optional<DType> StorageDType(std::string_view global) {
  for (const auto& s : kStorageClasses) {
    if (global == s.name) return s.dtype;
  }
  return std::nullopt;
}

bool AllowedGlobal(std::string_view global) {
  return global == kOrderedDict || global == kRebuildTensorV2 || global == kRebuildTensor ||
         global == kRebuildParameter || global == kRebuildParameterWithState || StorageDType(global).has_value();
}

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kBytes,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "a bool";
    case Kind::kInt:
      return "an int";
    case Kind::kFloat:
      return "a float";
    case Kind::kString:
      return "a string";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "a tuple";
    case Kind::kList:
      return "a list";
    case Kind::kDict:
      return "a dict";
    case Kind::kGlobal:
      return "a class or function";
    case Kind::kStorage:
      return "a storage";
    case Kind::kTensor:
      return "a tensor";
  }
  return "?";
}

// Objects live in one arena and refer to each other by index: no recursion to build, walk or
// free them, however a hostile pickle nests them.
struct Object {
  Kind kind = Kind::kNone;
  int64_t integer = 0;
  double real = 0;
  std::string text;           // kString, kBytes; kGlobal: "module.name"
  std::vector<size_t> items;  // kTuple, kList; kDict: key0, value0, key1, value1, ...
  size_t record = 0;          // kStorage, kTensor: index into the machine's records
};

class PickleMachine {
 public:
  PickleMachine(std::string_view data, std::string_view what) : data_(data), what_(what) {}

  StatusOr<std::vector<TorchTensorRecord>> Run() {
    if (data_.size() > kMaxTorchPickleBytes) {
      return InvalidArgumentError(std::string(what_) + ": data.pkl of " + std::to_string(data_.size()) +
                                  " bytes is over the limit of " + std::to_string(kMaxTorchPickleBytes));
    }
    while (true) {
      if (pos_ >= data_.size()) return Fail("ends without STOP (truncated pickle?)");
      op_pos_ = pos_;
      const auto op = static_cast<unsigned char>(data_[pos_++]);
      if (op == '.') break;  // STOP
      XCPIPE_RETURN_IF_ERROR(Step(op));
    }
    if (stack_.size() != 1 || !marks_.empty())
      return Fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
    return Extract(stack_.back());
  }

 private:
  Status Fail(const std::string& why) const {
    return InvalidArgumentError(std::string(what_) + ": data.pkl byte " + std::to_string(op_pos_) + ": " + why);
  }

  StatusOr<size_t> New(Object object) {
    if (objects_.size() >= kMaxTorchPickleObjects)
      return Fail("more than " + std::to_string(kMaxTorchPickleObjects) + " objects");
    objects_.push_back(std::move(object));
    return objects_.size() - 1;
  }
  Status PushNew(Object object) {
    XCPIPE_ASSIGN_OR_RETURN(size_t id, New(std::move(object)));
    stack_.push_back(id);
    return OkStatus();
  }
  Status PushInt(int64_t v) {
    Object o;
    o.kind = Kind::kInt;
    o.integer = v;
    return PushNew(std::move(o));
  }
  StatusOr<size_t> Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) return Fail("stack underflow");
    size_t id = stack_.back();
    stack_.pop_back();
    return id;
  }
  StatusOr<size_t> Top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) return Fail("stack underflow");
    return stack_.back();
  }
  StatusOr<std::vector<size_t>> PopToMark() {
    if (marks_.empty()) return Fail("no MARK to pop to");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<size_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  StatusOr<std::string_view> Take(uint64_t n) {
    if (n > data_.size() - pos_) return Fail("needs " + std::to_string(n) + " bytes past the end (truncated pickle?)");
    std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  StatusOr<uint64_t> LittleEndian(int bytes) {
    XCPIPE_ASSIGN_OR_RETURN(std::string_view raw, Take(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(raw[i]);
    return v;
  }
  StatusOr<std::string_view> Line() {
    auto end = data_.find('\n', pos_);
    if (end == std::string_view::npos || end - pos_ > 256) return Fail("GLOBAL without a short newline-ended name");
    std::string_view out = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }

  Status PushGlobal(const std::string& module, const std::string& name) {
    std::string global = module + "." + name;
    if (!AllowedGlobal(global)) {
      return Fail("refusing pickle GLOBAL '" + global +
                  "': only tensors (torch._utils._rebuild_tensor_v2 over torch.*Storage) in a dict or "
                  "collections.OrderedDict are read, and nothing in the file is ever called");
    }
    Object o;
    o.kind = Kind::kGlobal;
    o.text = std::move(global);
    return PushNew(std::move(o));
  }

  Status PushText(Kind kind, uint64_t length) {
    XCPIPE_ASSIGN_OR_RETURN(std::string_view raw, Take(length));
    Object o;
    o.kind = kind;
    o.text = std::string(raw);
    return PushNew(std::move(o));
  }

  StatusOr<std::vector<int64_t>> IntTuple(size_t id, const char* what) {
    const Object& o = objects_[id];
    if (o.kind != Kind::kTuple) return Fail(std::string(what) + " is " + KindName(o.kind) + ", not a tuple");
    std::vector<int64_t> out;
    for (size_t item : o.items) {
      const Object& v = objects_[item];
      if (v.kind != Kind::kInt || v.integer < 0) return Fail(std::string(what) + " holds a negative or non-int value");
      out.push_back(v.integer);
    }
    return out;
  }

  // torch._utils._rebuild_tensor[_v2](storage, storage_offset, size, stride, ...)
  Status RebuildTensor(const std::vector<size_t>& args) {
    if (args.size() < 4) return Fail("tensor rebuild with " + std::to_string(args.size()) + " arguments");
    const Object& storage = objects_[args[0]];
    if (storage.kind != Kind::kStorage) return Fail("tensor rebuilt from " + std::string(KindName(storage.kind)));
    const Object& offset = objects_[args[1]];
    if (offset.kind != Kind::kInt || offset.integer < 0) return Fail("tensor storage_offset is not a non-negative int");
    TorchTensorRecord t = records_[storage.record];
    t.storage_offset = offset.integer;
    XCPIPE_ASSIGN_OR_RETURN(t.shape, IntTuple(args[2], "tensor size"));
    XCPIPE_ASSIGN_OR_RETURN(t.stride, IntTuple(args[3], "tensor stride"));
    if (t.shape.size() != t.stride.size()) return Fail("tensor size and stride differ in length");
    // Extent inside the storage, with overflow checks.
    int64_t numel = 1;
    int64_t last = t.storage_offset;
    bool overflow = false;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      overflow |= __builtin_mul_overflow(numel, t.shape[i], &numel);
    }
    if (!overflow && numel > 0) {
      for (size_t i = 0; i < t.shape.size(); ++i) {
        int64_t step = 0;
        overflow |= __builtin_mul_overflow(t.shape[i] - 1, t.stride[i], &step);
        overflow |= __builtin_add_overflow(last, step, &last);
      }
    }
    if (overflow || numel > (int64_t{1} << 50)) return Fail("tensor size overflows");
    if ((numel > 0 && last >= t.storage_numel) || t.storage_offset > t.storage_numel) {
      return Fail("tensor of size " + std::to_string(numel) + " at offset " + std::to_string(t.storage_offset) +
                  " reaches past its storage '" + t.storage_key + "' of " + std::to_string(t.storage_numel) +
                  " elements");
    }
    records_.push_back(std::move(t));
    Object o;
    o.kind = Kind::kTensor;
    o.record = records_.size() - 1;
    return PushNew(std::move(o));
  }

  Status Reduce() {
    XCPIPE_ASSIGN_OR_RETURN(size_t args_id, Pop());
    XCPIPE_ASSIGN_OR_RETURN(size_t callable_id, Pop());
    const Object& callable = objects_[callable_id];
    const Object& args = objects_[args_id];
    if (callable.kind != Kind::kGlobal) return Fail("REDUCE calls " + std::string(KindName(callable.kind)));
    if (args.kind != Kind::kTuple) return Fail("REDUCE arguments are " + std::string(KindName(args.kind)));
    const std::string& name = callable.text;
    const std::vector<size_t> items = args.items;
    if (name == kOrderedDict) {
      if (!items.empty()) return Fail("collections.OrderedDict called with arguments");
      Object o;
      o.kind = Kind::kDict;
      return PushNew(std::move(o));
    }
    if (name == kRebuildTensorV2 || name == kRebuildTensor) return RebuildTensor(items);
    if (name == kRebuildParameter || name == kRebuildParameterWithState) {
      if (items.empty() || objects_[items[0]].kind != Kind::kTensor) return Fail(name + " without a tensor");
      stack_.push_back(items[0]);  // a Parameter is its tensor here
      return OkStatus();
    }
    return Fail("REDUCE of '" + name + "' is not allowed");
  }

  // ('storage', torch.<T>Storage, key, location, numel)
  Status PersistentLoad(size_t pid_id) {
    const Object& pid = objects_[pid_id];
    auto bad = [&](const std::string& why) { return Fail("persistent id " + why); };
    if (pid.kind != Kind::kTuple || pid.items.size() != 5)
      return bad("is not a 5-tuple ('storage', type, key, location, numel)");
    const Object& tag = objects_[pid.items[0]];
    const Object& type = objects_[pid.items[1]];
    const Object& key = objects_[pid.items[2]];
    const Object& numel = objects_[pid.items[4]];
    if (tag.kind != Kind::kString || tag.text != "storage") return bad("does not start with 'storage'");
    if (type.kind != Kind::kGlobal || !StorageDType(type.text)) return bad("names no torch.<T>Storage class");
    if (key.kind != Kind::kString || key.text.empty() || key.text.size() > 64 ||
        key.text.find_first_of("/\\.") != std::string::npos) {
      return bad("has a bad storage key");
    }
    if (numel.kind != Kind::kInt || numel.integer < 0) return bad("has a bad element count");
    TorchTensorRecord storage;
    storage.dtype = *StorageDType(type.text);
    storage.storage_key = key.text;
    storage.storage_numel = numel.integer;
    records_.push_back(std::move(storage));
    Object o;
    o.kind = Kind::kStorage;
    o.record = records_.size() - 1;
    return PushNew(std::move(o));
  }

  Status AppendTo(size_t target, const std::vector<size_t>& values, Kind expected, const char* op) {
    Object& o = objects_[target];
    if (o.kind != expected) return Fail(std::string(op) + " on " + KindName(o.kind));
    if (expected == Kind::kDict && values.size() % 2 != 0) return Fail("SETITEMS with an odd number of values");
    o.items.insert(o.items.end(), values.begin(), values.end());
    return OkStatus();
  }

  Status Step(unsigned char op) {
    switch (op) {
      case 0x80: {  // PROTO
        XCPIPE_ASSIGN_OR_RETURN(uint64_t proto, LittleEndian(1));
        if (proto > 5) return Fail("pickle protocol " + std::to_string(proto) + " is unknown");
        return OkStatus();
      }
      case 0x95: {  // FRAME (protocol 4): a length hint only
        XCPIPE_ASSIGN_OR_RETURN(uint64_t ignored, LittleEndian(8));
        (void)ignored;
        return OkStatus();
      }
      case '(':  // MARK
        marks_.push_back(stack_.size());
        return OkStatus();
      case ')': {  // EMPTY_TUPLE
        Object o;
        o.kind = Kind::kTuple;
        return PushNew(std::move(o));
      }
      case ']': {  // EMPTY_LIST
        Object o;
        o.kind = Kind::kList;
        return PushNew(std::move(o));
      }
      case '}': {  // EMPTY_DICT
        Object o;
        o.kind = Kind::kDict;
        return PushNew(std::move(o));
      }
      case 't':    // TUPLE
      case 'l':    // LIST
      case 'd': {  // DICT
        XCPIPE_ASSIGN_OR_RETURN(std::vector<size_t> items, PopToMark());
        Object o;
        o.kind = op == 't' ? Kind::kTuple : (op == 'l' ? Kind::kList : Kind::kDict);
        if (o.kind == Kind::kDict && items.size() % 2 != 0) return Fail("DICT with an odd number of values");
        o.items = std::move(items);
        return PushNew(std::move(o));
      }
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t n = op - 0x84;
        Object o;
        o.kind = Kind::kTuple;
        o.items.resize(n);
        for (size_t i = n; i-- > 0;) {
          XCPIPE_ASSIGN_OR_RETURN(o.items[i], Pop());
        }
        return PushNew(std::move(o));
      }
      case 'N': {
        Object o;
        return PushNew(std::move(o));
      }
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Object o;
        o.kind = Kind::kBool;
        o.integer = op == 0x88;
        return PushNew(std::move(o));
      }
      case 'K': {  // BININT1
        XCPIPE_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(1));
        return PushInt(static_cast<int64_t>(v));
      }
      case 'M': {  // BININT2
        XCPIPE_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(2));
        return PushInt(static_cast<int64_t>(v));
      }
      case 'J': {  // BININT (signed 32)
        XCPIPE_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(4));
        return PushInt(static_cast<int32_t>(static_cast<uint32_t>(v)));
      }
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(op == 0x8a ? 1 : 4));
        if (n > 8) return Fail("integer of " + std::to_string(n) + " bytes is too large");
        if (n == 0) return PushInt(0);
        XCPIPE_ASSIGN_OR_RETURN(uint64_t v, LittleEndian(static_cast<int>(n)));
        if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        return PushInt(static_cast<int64_t>(v));
      }
      case 'G': {  // BINFLOAT (big-endian double)
        XCPIPE_ASSIGN_OR_RETURN(std::string_view raw, Take(8));
        uint64_t bits = 0;
        for (char c : raw) bits = (bits << 8) | static_cast<unsigned char>(c);
        Object o;
        o.kind = Kind::kFloat;
        std::memcpy(&o.real, &bits, sizeof bits);
        return PushNew(std::move(o));
      }
      case 0x8c: {  // SHORT_BINUNICODE
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(1));
        return PushText(Kind::kString, n);
      }
      case 'X': {  // BINUNICODE
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(4));
        return PushText(Kind::kString, n);
      }
      case 0x8d: {  // BINUNICODE8
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(8));
        return PushText(Kind::kString, n);
      }
      case 'U': {  // SHORT_BINSTRING
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(1));
        return PushText(Kind::kString, n);
      }
      case 'T': {  // BINSTRING
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(4));
        return PushText(Kind::kString, n);
      }
      case 'C': {  // SHORT_BINBYTES
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(1));
        return PushText(Kind::kBytes, n);
      }
      case 'B': {  // BINBYTES
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(4));
        return PushText(Kind::kBytes, n);
      }
      case 0x8e: {  // BINBYTES8
        XCPIPE_ASSIGN_OR_RETURN(uint64_t n, LittleEndian(8));
        return PushText(Kind::kBytes, n);
      }
      case 'c': {  // GLOBAL "module\nname\n"
        XCPIPE_ASSIGN_OR_RETURN(std::string_view module, Line());
        XCPIPE_ASSIGN_OR_RETURN(std::string_view name, Line());
        return PushGlobal(std::string(module), std::string(name));
      }
      case 0x93: {  // STACK_GLOBAL
        XCPIPE_ASSIGN_OR_RETURN(size_t name_id, Pop());
        XCPIPE_ASSIGN_OR_RETURN(size_t module_id, Pop());
        if (objects_[name_id].kind != Kind::kString || objects_[module_id].kind != Kind::kString) {
          return Fail("STACK_GLOBAL without two strings");
        }
        return PushGlobal(objects_[module_id].text, objects_[name_id].text);
      }
      case 'q': {  // BINPUT
        XCPIPE_ASSIGN_OR_RETURN(uint64_t index, LittleEndian(1));
        return Put(index);
      }
      case 'r': {  // LONG_BINPUT
        XCPIPE_ASSIGN_OR_RETURN(uint64_t index, LittleEndian(4));
        return Put(index);
      }
      case 0x94:  // MEMOIZE
        return Put(memo_.size());
      case 'h': {  // BINGET
        XCPIPE_ASSIGN_OR_RETURN(uint64_t index, LittleEndian(1));
        return Get(index);
      }
      case 'j': {  // LONG_BINGET
        XCPIPE_ASSIGN_OR_RETURN(uint64_t index, LittleEndian(4));
        return Get(index);
      }
      case 'a': {  // APPEND
        XCPIPE_ASSIGN_OR_RETURN(size_t value, Pop());
        XCPIPE_ASSIGN_OR_RETURN(size_t list, Top());
        return AppendTo(list, {value}, Kind::kList, "APPEND");
      }
      case 'e': {  // APPENDS
        XCPIPE_ASSIGN_OR_RETURN(std::vector<size_t> values, PopToMark());
        XCPIPE_ASSIGN_OR_RETURN(size_t list, Top());
        return AppendTo(list, values, Kind::kList, "APPENDS");
      }
      case 's': {  // SETITEM
        XCPIPE_ASSIGN_OR_RETURN(size_t value, Pop());
        XCPIPE_ASSIGN_OR_RETURN(size_t key, Pop());
        XCPIPE_ASSIGN_OR_RETURN(size_t dict, Top());
        return AppendTo(dict, {key, value}, Kind::kDict, "SETITEM");
      }
      case 'u': {  // SETITEMS
        XCPIPE_ASSIGN_OR_RETURN(std::vector<size_t> values, PopToMark());
        XCPIPE_ASSIGN_OR_RETURN(size_t dict, Top());
        return AppendTo(dict, values, Kind::kDict, "SETITEMS");
      }
      case 'R':
        return Reduce();
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args); only OrderedDict
        XCPIPE_ASSIGN_OR_RETURN(size_t args, Pop());
        XCPIPE_ASSIGN_OR_RETURN(size_t cls, Pop());
        (void)args;
        if (objects_[cls].kind != Kind::kGlobal || objects_[cls].text != kOrderedDict) {
          return Fail("NEWOBJ of " + std::string(KindName(objects_[cls].kind)) + " '" + objects_[cls].text +
                      "' is not allowed");
        }
        Object o;
        o.kind = Kind::kDict;
        return PushNew(std::move(o));
      }
      case 'b': {  // BUILD: state for the object below; a state_dict's _metadata is dropped
        XCPIPE_ASSIGN_OR_RETURN(size_t state, Pop());
        (void)state;
        XCPIPE_ASSIGN_OR_RETURN(size_t target, Top());
        Kind kind = objects_[target].kind;
        if (kind != Kind::kDict && kind != Kind::kTensor) return Fail(std::string("BUILD on ") + KindName(kind));
        return OkStatus();
      }
      case 'Q': {  // BINPERSID
        XCPIPE_ASSIGN_OR_RETURN(size_t pid, Pop());
        return PersistentLoad(pid);
      }
      case '0': {  // POP
        XCPIPE_ASSIGN_OR_RETURN(size_t ignored, Pop());
        (void)ignored;
        return OkStatus();
      }
      case '1': {  // POP_MARK
        XCPIPE_ASSIGN_OR_RETURN(std::vector<size_t> ignored, PopToMark());
        return OkStatus();
      }
      case '2': {  // DUP
        XCPIPE_ASSIGN_OR_RETURN(size_t top, Top());
        stack_.push_back(top);
        return OkStatus();
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        return Fail(std::string("pickle opcode ") + hex + " is not one torch.save uses for a state_dict");
      }
    }
  }

  Status Put(uint64_t index) {
    XCPIPE_ASSIGN_OR_RETURN(size_t top, Top());
    if (index > kMaxTorchPickleObjects) return Fail("memo index " + std::to_string(index) + " is too large");
    memo_[index] = top;
    return OkStatus();
  }
  Status Get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Fail("memo index " + std::to_string(index) + " was never stored");
    stack_.push_back(it->second);
    return OkStatus();
  }

  StatusOr<std::vector<TorchTensorRecord>> Extract(size_t root) {
    const Object& dict = objects_[root];
    if (dict.kind != Kind::kDict) {
      return InvalidArgumentError(std::string(what_) + ": holds " + KindName(dict.kind) +
                                  ", not a dict of tensors (a state_dict)");
    }
    std::vector<TorchTensorRecord> out;
    std::unordered_set<std::string> names;
    for (size_t i = 0; i + 1 < dict.items.size(); i += 2) {
      const Object& key = objects_[dict.items[i]];
      const Object& value = objects_[dict.items[i + 1]];
      if (key.kind != Kind::kString) {
        return InvalidArgumentError(std::string(what_) + ": a key of the state_dict is " + KindName(key.kind));
      }
      if (value.kind != Kind::kTensor) {
        return InvalidArgumentError(std::string(what_) + ": '" + key.text + "' is " + KindName(value.kind) +
                                    ", not a tensor: only flat state_dicts of tensors are converted");
      }
      if (!names.insert(key.text).second) {
        return InvalidArgumentError(std::string(what_) + ": tensor '" + key.text + "' appears twice");
      }
      TorchTensorRecord t = records_[value.record];
      t.name = key.text;
      out.push_back(std::move(t));
    }
    return out;
  }

  std::string_view data_;
  std::string_view what_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Object> objects_;
  std::vector<TorchTensorRecord> records_;  // storages and tensors (one per kStorage/kTensor object)
  std::vector<size_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, size_t> memo_;
};

std::string ZipErrorText(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string text = zip_error_strerror(&error);
  zip_error_fini(&error);
  return text;
}

}  // namespace

StatusOr<std::vector<TorchTensorRecord>> ParseTorchStateDictPickle(std::string_view pickle, std::string_view what) {
  return PickleMachine(pickle, what).Run();
}

struct TorchZipFile::Archive {
  zip_t* zip = nullptr;
  std::unordered_map<std::string, zip_uint64_t> entries;  // name -> index
  ~Archive() {
    if (zip) zip_discard(zip);  // read-only: nothing to write back
  }

  StatusOr<std::string> Read(const std::string& name, uint64_t max_bytes, const std::string& what) {
    auto it = entries.find(name);
    if (it == entries.end()) return NotFoundError(what + ": archive has no entry '" + name + "'");
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip, it->second, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) {
      return InvalidArgumentError(what + ": cannot stat archive entry '" + name + "'");
    }
    if (st.size > max_bytes) {
      return InvalidArgumentError(what + ": archive entry '" + name + "' holds " + std::to_string(st.size) +
                                  " bytes, more than the " + std::to_string(max_bytes) + " expected");
    }
    zip_file_t* file = zip_fopen_index(zip, it->second, 0);
    if (!file) return InvalidArgumentError(what + ": cannot open archive entry '" + name + "': " + zip_strerror(zip));
    std::string out(st.size, '\0');
    uint64_t done = 0;
    while (done < st.size) {
      zip_int64_t n = zip_fread(file, out.data() + done, st.size - done);
      if (n <= 0) break;
      done += static_cast<uint64_t>(n);
    }
    std::string error = FileErrorText(file);
    zip_fclose(file);
    if (done != st.size) {
      return InvalidArgumentError(what + ": archive entry '" + name + "' is short (" + std::to_string(done) + " of " +
                                  std::to_string(st.size) + " bytes" + (error.empty() ? "" : ": " + error) +
                                  "; truncated file?)");
    }
    return out;
  }
  static std::string FileErrorText(zip_file_t* file) {
    zip_error_t* e = zip_file_get_error(file);
    return (e && zip_error_code_zip(e) != ZIP_ER_OK) ? zip_error_strerror(e) : "";
  }
  uint64_t Size(const std::string& name) {
    auto it = entries.find(name);
    if (it == entries.end()) return 0;
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip, it->second, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) return 0;
    return st.size;
  }
};

TorchZipFile::TorchZipFile() = default;
TorchZipFile::~TorchZipFile() = default;

StatusOr<std::unique_ptr<TorchZipFile>> TorchZipFile::Open(const std::filesystem::path& file) {
  const std::string what = file.string();
  {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::error_code ec;
      if (!std::filesystem::exists(file, ec)) return NotFoundError(what + ": no such file");
      return InvalidArgumentError(what + ": cannot open for reading");
    }
    char magic[4] = {};
    in.read(magic, 4);
    if (std::memcmp(magic, "PK\x03\x04", 4) != 0) {
      if (static_cast<unsigned char>(magic[0]) == 0x80) {
        return InvalidArgumentError(what +
                                    ": a legacy (non-zip) torch.save file, written by torch < 1.6 or with "
                                    "_use_new_zipfile_serialization=False; re-save it with a newer torch "
                                    "(torch.save(torch.load(f), f)) and convert again");
      }
      return InvalidArgumentError(what + ": not a torch.save zip archive (no zip signature)");
    }
  }
  std::unique_ptr<TorchZipFile> out(new TorchZipFile());
  out->file_ = file;
  out->archive_ = std::make_unique<Archive>();
  int error = 0;
  out->archive_->zip = zip_open(file.c_str(), ZIP_RDONLY, &error);
  if (!out->archive_->zip) return InvalidArgumentError(what + ": cannot read the zip archive: " + ZipErrorText(error));

  zip_int64_t count = zip_get_num_entries(out->archive_->zip, 0);
  std::string pickle_entry;
  for (zip_int64_t i = 0; i < count; ++i) {
    const char* name = zip_get_name(out->archive_->zip, static_cast<zip_uint64_t>(i), ZIP_FL_ENC_RAW);
    if (!name) continue;
    std::string entry = name;
    out->archive_->entries.emplace(entry, static_cast<zip_uint64_t>(i));
    const bool top_level_pickle =
        entry == "data.pkl" || (entry.size() > 9 && entry.compare(entry.size() - 9, 9, "/data.pkl") == 0 &&
                                entry.find('/') == entry.size() - 9);
    if (top_level_pickle) {
      if (!pickle_entry.empty()) return InvalidArgumentError(what + ": more than one data.pkl in the archive");
      pickle_entry = entry;
    }
  }
  if (pickle_entry.empty())
    return InvalidArgumentError(what + ": zip archive without <name>/data.pkl (not torch.save?)");
  out->prefix_ = pickle_entry.substr(0, pickle_entry.size() - std::string("data.pkl").size());

  if (out->archive_->entries.count(out->prefix_ + "byteorder")) {
    XCPIPE_ASSIGN_OR_RETURN(std::string order, out->archive_->Read(out->prefix_ + "byteorder", 16, what));
    if (order != "little") {
      return UnimplementedError(what + ": tensors stored " + order + "-endian; only little-endian files are read");
    }
  }
  XCPIPE_ASSIGN_OR_RETURN(std::string pickle, out->archive_->Read(pickle_entry, kMaxTorchPickleBytes, what));
  XCPIPE_ASSIGN_OR_RETURN(out->tensors_, ParseTorchStateDictPickle(pickle, what));
  // Every storage must be in the archive and hold what the pickle says.
  for (const auto& t : out->tensors_) {
    const std::string entry = out->prefix_ + "data/" + t.storage_key;
    if (!out->archive_->entries.count(entry)) {
      return InvalidArgumentError(what + ": tensor '" + t.name + "' needs storage '" + entry +
                                  "', which the archive does not hold");
    }
    const uint64_t needed = static_cast<uint64_t>(t.storage_numel) * DTypeBytes(t.dtype);
    const uint64_t held = out->archive_->Size(entry);
    if (held < needed) {
      return InvalidArgumentError(what + ": tensor '" + t.name + "': storage '" + entry + "' holds " +
                                  std::to_string(held) + " bytes, the pickle says " + std::to_string(needed));
    }
  }
  return out;
}

StatusOr<std::string> TorchZipFile::ReadTensor(const TorchTensorRecord& t) {
  const std::string what = file_.string();
  const size_t element = DTypeBytes(t.dtype);
  const uint64_t storage_bytes = static_cast<uint64_t>(t.storage_numel) * element;
  XCPIPE_ASSIGN_OR_RETURN(std::string storage,
                          archive_->Read(prefix_ + "data/" + t.storage_key, storage_bytes + 64, what));
  if (storage.size() < storage_bytes) {
    return InvalidArgumentError(what + ": storage of tensor '" + t.name + "' is short");
  }
  const uint64_t bytes = t.bytes();
  if (t.contiguous()) {
    const uint64_t begin = static_cast<uint64_t>(t.storage_offset) * element;
    if (begin == 0 && bytes == storage.size()) return storage;
    return storage.substr(begin, bytes);
  }
  // A strided view (a transposed or sliced tensor saved as such): gather it row-major.
  std::string out(bytes, '\0');
  std::vector<int64_t> index(t.shape.size(), 0);
  const int64_t numel = t.numel();
  for (int64_t n = 0; n < numel; ++n) {
    int64_t source = t.storage_offset;
    for (size_t d = 0; d < index.size(); ++d) source += index[d] * t.stride[d];
    std::memcpy(out.data() + static_cast<size_t>(n) * element, storage.data() + static_cast<size_t>(source) * element,
                element);
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

}  // namespace xcpipe::checkpoint
