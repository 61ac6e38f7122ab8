// shmq::Value<T> and shmq::Array<T>: Python's multiprocessing.Value and Array, for trivially
// copyable T, in shared memory.
//
//   shmq::Value<long> counter(0);               // counter = multiprocessing.Value('l', 0)
//   {                                           // with counter.get_lock():
//     std::scoped_lock held(counter.get_lock());
//     counter.set(counter.get() + 1);           //     counter.value += 1
//   }
//   shmq::Array<double> xs(8);                  // xs = multiprocessing.Array('d', 8)
//
// As in Python, each has a robust RLock (get_lock()) unless made with lock = false, and get() and
// set() take it for the one access (an RLock: inside `with get_lock()` they nest). A process
// killed while holding it leaves the lock to the next acquirer with owner_died() set (lock.hpp);
// a process killed inside set() may leave that element half written, which owner_died() then
// flags. Without a lock, get() and set() are plain copies: racing writers may tear a value.
//
// Handles are copyable; copies (and copies in children made by fork) share the value. open()
// checks the element type by name (Incompatible for another), open_or_create also the length.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "shmq/lock.hpp"

namespace shmq {

namespace detail {

// Value and Array: `count` elements of T after the header, guarded (when it has one) by the
// header's RLock.
template <class T, ObjectKind Kind>
class SharedElements : public NamedObject<SharedElements<T, Kind>> {
  static_assert(std::is_trivially_copyable_v<T>, "Value and Array hold trivially copyable types");

 public:
  // The lock that guards the elements (for std::scoped_lock, or Python's `with v.get_lock():`);
  // LockMisuse for one made with lock = false.
  RLock& get_lock() const {
    if (!lock_) {
      throw LockMisuse("shmq: " + this->object_->description() +
                       " was made with lock = false: it has no lock");
    }
    return *lock_;
  }
  bool has_lock() const noexcept { return lock_.has_value(); }
  std::size_t size() const noexcept { return this->object_->data_bytes() / sizeof(T); }
  // The elements themselves, unguarded (Python's get_obj()).
  T* data() const noexcept { return reinterpret_cast<T*>(this->object_->data()); }

  static constexpr std::uint32_t kinds() { return kind_bit(Kind); }
  static const TypeTag& type_tag() {
    static const TypeTag tag = make_type_tag(typeid(T).name());
    return tag;
  }

 protected:
  explicit SharedElements(std::shared_ptr<SyncObject> object)
      : NamedObject<SharedElements>(std::move(object)) {
    // The header's sizes are not trusted (hostile bytes): only whole elements of T are read.
    const std::uint64_t bytes = this->object_->data_bytes();
    if (Kind == ObjectKind::value ? bytes != sizeof(T) : bytes % sizeof(T) != 0) {
      throw Incompatible("shmq: " + this->object_->description() + " holds " +
                         std::to_string(bytes) + " bytes, not " +
                         (Kind == ObjectKind::value ? "one" : "a whole number of") +
                         " element(s) of " + std::to_string(sizeof(T)) + " bytes");
    }
    if (this->object_->header().has_lock != 0) lock_.emplace(RLock(this->object_));
  }
  static std::shared_ptr<SyncObject> opened(std::string_view name) {
    return SyncObject::open(name, kinds(), &type_tag());
  }
  static ObjectSpec spec(std::size_t count, bool lock) {
    ObjectSpec s{Kind};
    s.data_bytes = count * sizeof(T);
    if (count > kMaxObjectBytes / sizeof(T)) s.data_bytes = kMaxObjectBytes + 1;  // refused
    s.type = &type_tag();
    s.element_bytes = sizeof(T);
    s.has_lock = lock;
    return s;
  }
  static std::shared_ptr<SyncObject> made(std::optional<std::string_view> name, std::size_t count,
                                          bool lock, mode_t mode, bool or_open) {
    const ObjectSpec s = spec(count, lock);
    if (!name) return SyncObject::create_anonymous(s);
    return or_open ? SyncObject::open_or_create(*name, s, mode)
                   : SyncObject::create(*name, s, mode);
  }
  // Copies n elements from `from` to `to` under the lock, if there is one. A copy that takes the
  // lock over from a dead holder leaves owner_died() for the next holder, who can repair.
  void copy(T* to, const T* from, std::size_t n) const {
    if (n == 0) return;  // an empty vector's data() may be null, which memcpy must not see
    if (lock_) lock_->core_.acquire(Deadline::never());
    std::memcpy(static_cast<void*>(to), static_cast<const void*>(from), n * sizeof(T));
    if (lock_) lock_->core_.release(true);
  }
  void check_index(std::size_t i) const {
    if (i >= size()) {
      throw InvalidArgument("shmq: " + this->object_->description() + ": index " +
                            std::to_string(i) + " is out of range (size " + std::to_string(size()) +
                            ")");
    }
  }

 private:
  // Made once, at open, if the header says there is a lock: hostile bytes written later cannot
  // make a reader skip it or take one that was never made.
  mutable std::optional<RLock> lock_;
};

}  // namespace detail

// multiprocessing.Value(typecode, value, lock=True).
template <class T>
class Value : public detail::SharedElements<T, detail::ObjectKind::value> {
  using Base = detail::SharedElements<T, detail::ObjectKind::value>;

 public:
  explicit Value(const T& initial = T{}, bool lock = true)
      : Value(Base::made(std::nullopt, 1, lock, 0600, false), initial) {}
  static Value create(std::string_view name, const T& initial = T{}, bool lock = true,
                      mode_t mode = 0600) {
    return Value(Base::made(name, 1, lock, mode, false), initial);
  }
  // Opens `name` if it exists, else creates it holding all-zero bytes (as Python's Value does
  // without an initial value).
  static Value open_or_create(std::string_view name, bool lock = true, mode_t mode = 0600) {
    return Value(Base::made(name, 1, lock, mode, true));
  }
  static Value open(std::string_view name) { return Value(Base::opened(name)); }

  // Python's .value, read and written under the lock.
  T get() const {
    T out;
    this->copy(&out, this->data(), 1);
    return out;
  }
  void set(const T& v) { this->copy(this->data(), &v, 1); }

 private:
  explicit Value(std::shared_ptr<detail::SyncObject> object) : Base(std::move(object)) {}
  Value(std::shared_ptr<detail::SyncObject> object, const T& initial) : Base(std::move(object)) {
    set(initial);
  }
};

// multiprocessing.Array(typecode, size_or_initializer, lock=True).
template <class T>
class Array : public detail::SharedElements<T, detail::ObjectKind::array> {
  using Base = detail::SharedElements<T, detail::ObjectKind::array>;

 public:
  // `size` elements, each `fill`.
  explicit Array(std::size_t size, const T& fill = T{}, bool lock = true)
      : Array(Base::made(std::nullopt, size, lock, 0600, false)) {
    fill_with(fill);
  }
  explicit Array(const std::vector<T>& initial, bool lock = true)
      : Array(Base::made(std::nullopt, initial.size(), lock, 0600, false)) {
    assign(initial);
  }
  static Array create(std::string_view name, std::size_t size, const T& fill = T{},
                      bool lock = true, mode_t mode = 0600) {
    Array a(Base::made(name, size, lock, mode, false));
    a.fill_with(fill);
    return a;
  }
  // Opens `name` if it exists (Incompatible if its length differs), else creates it.
  static Array open_or_create(std::string_view name, std::size_t size, bool lock = true,
                              mode_t mode = 0600) {
    return Array(Base::made(name, size, lock, mode, true));
  }
  static Array open(std::string_view name) { return Array(Base::opened(name)); }

  // a[i] and a[i] = v, under the lock; InvalidArgument past the end (Python's IndexError).
  T get(std::size_t i) const {
    this->check_index(i);
    T out;
    this->copy(&out, this->data() + i, 1);
    return out;
  }
  void set(std::size_t i, const T& v) {
    this->check_index(i);
    this->copy(this->data() + i, &v, 1);
  }
  // a[:], under the lock.
  std::vector<T> to_vector() const {
    std::vector<T> out(this->size());
    this->copy(out.data(), this->data(), out.size());
    return out;
  }
  // a[:] = values; InvalidArgument unless the lengths match.
  void assign(const std::vector<T>& values) {
    if (values.size() != this->size()) {
      throw InvalidArgument("shmq: " + this->object_->description() + ": cannot assign " +
                            std::to_string(values.size()) + " elements to an array of " +
                            std::to_string(this->size()));
    }
    this->copy(this->data(), values.data(), values.size());
  }

 private:
  explicit Array(std::shared_ptr<detail::SyncObject> object) : Base(std::move(object)) {}
  void fill_with(const T& fill) {
    for (std::size_t i = 0; i < this->size(); ++i) this->copy(this->data() + i, &fill, 1);
  }
};

template <class T>
struct codec<Value<T>> : detail::queue_handle_codec<Value<T>> {};
template <class T>
struct codec<Array<T>> : detail::queue_handle_codec<Array<T>> {};

}  // namespace shmq
