#include "trace/h5_output_driver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

#if H5_VERS_MAJOR != 1 || H5_VERS_MINOR != 10
#error "h5_output_driver implements HDF5 1.10's H5FD_class_t (Debian 12); port it for other versions"
#endif

namespace kvsim::h5 {

namespace {

struct Config {
  OutputStatus* status;
};

// H5FD_t must come first: HDF5 casts between the two.
struct OutFile {
  H5FD_t pub;
  int fd = -1;
  haddr_t eoa = 0, eof = 0;
  OutputStatus* status = nullptr;
};

constexpr haddr_t kMaxAddr = (static_cast<haddr_t>(1) << (8 * sizeof(off_t) - 1)) - 1;

void record(OutFile* f, int err, const char* op) {
  if (f->status && f->status->ok()) {
    f->status->error = err ? err : EIO;
    f->status->operation = op;
  }
}

void* fapl_get(H5FD_t* file) {
  auto* c = static_cast<Config*>(std::malloc(sizeof(Config)));
  if (c) c->status = reinterpret_cast<OutFile*>(file)->status;
  return c;
}
void* fapl_copy(const void* fapl) {
  auto* c = static_cast<Config*>(std::malloc(sizeof(Config)));
  if (c) std::memcpy(c, fapl, sizeof(Config));
  return c;
}
herr_t fapl_free(void* fapl) {
  std::free(fapl);
  return 0;
}

H5FD_t* open_file(const char* name, unsigned flags, hid_t fapl, haddr_t maxaddr) {
  if (!name || !*name || maxaddr == 0 || maxaddr > kMaxAddr) return nullptr;
  int o = (flags & H5F_ACC_RDWR) ? O_RDWR : O_RDONLY;
  if (flags & H5F_ACC_TRUNC) o |= O_TRUNC;
  if (flags & H5F_ACC_CREAT) o |= O_CREAT;
  if (flags & H5F_ACC_EXCL) o |= O_EXCL;
  const int fd = ::open(name, o | O_CLOEXEC, 0666);
  if (fd < 0) return nullptr;
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return nullptr;
  }
  auto* f = new (std::nothrow) OutFile();
  if (!f) {
    ::close(fd);
    return nullptr;
  }
  f->fd = fd;
  f->eof = static_cast<haddr_t>(st.st_size);
  const auto* c = static_cast<const Config*>(H5Pget_driver_info(fapl));
  f->status = c ? c->status : nullptr;
  return &f->pub;
}

herr_t close_file(H5FD_t* file) {
  auto* f = reinterpret_cast<OutFile*>(file);
  if (::close(f->fd) != 0) record(f, errno, "close");
  delete f;
  return 0;  // always released: the error is in the status
}

herr_t query(const H5FD_t*, unsigned long* flags) {
  if (flags)
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_DATA_SIEVE |
             H5FD_FEAT_AGGREGATE_SMALLDATA;
  return 0;
}

haddr_t get_eoa(const H5FD_t* file, H5FD_mem_t) { return reinterpret_cast<const OutFile*>(file)->eoa; }
herr_t set_eoa(H5FD_t* file, H5FD_mem_t, haddr_t addr) {
  reinterpret_cast<OutFile*>(file)->eoa = addr;
  return 0;
}
haddr_t get_eof(const H5FD_t* file, H5FD_mem_t) { return reinterpret_cast<const OutFile*>(file)->eof; }
herr_t get_handle(H5FD_t* file, hid_t, void** handle) {
  *handle = &reinterpret_cast<OutFile*>(file)->fd;
  return 0;
}

herr_t read(H5FD_t* file, H5FD_mem_t, hid_t, haddr_t addr, size_t size, void* buf) {
  auto* f = reinterpret_cast<OutFile*>(file);
  auto* p = static_cast<unsigned char*>(buf);
  while (size > 0) {
    const ssize_t n = pread(f->fd, p, size, static_cast<off_t>(addr));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // past the end (or a failed region): zeros, as sec2 does past EOF
    p += n;
    addr += static_cast<haddr_t>(n);
    size -= static_cast<size_t>(n);
  }
  std::memset(p, 0, size);
  return 0;
}

herr_t write(H5FD_t* file, H5FD_mem_t, hid_t, haddr_t addr, size_t size, const void* buf) {
  auto* f = reinterpret_cast<OutFile*>(file);
  if (f->status && !f->status->ok()) return 0;  // the file is lost already; HDF5 only needs to finish
  const auto* p = static_cast<const unsigned char*>(buf);
  const haddr_t end = addr + size;
  while (size > 0) {
    const ssize_t n = pwrite(f->fd, p, size, static_cast<off_t>(addr));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      record(f, n < 0 ? errno : ENOSPC, "write");
      return 0;
    }
    p += n;
    addr += static_cast<haddr_t>(n);
    size -= static_cast<size_t>(n);
  }
  if (end > f->eof) f->eof = end;
  return 0;
}

herr_t truncate(H5FD_t* file, hid_t, hbool_t) {
  auto* f = reinterpret_cast<OutFile*>(file);
  if (f->eoa == f->eof) return 0;
  if (f->status && !f->status->ok()) return 0;
  if (ftruncate(f->fd, static_cast<off_t>(f->eoa)) != 0) record(f, errno, "truncate");
  else f->eof = f->eoa;
  return 0;
}

H5FD_class_t make_class() {
  H5FD_class_t c{};
  c.name = "kvsim_output";
  c.maxaddr = kMaxAddr;
  c.fc_degree = H5F_CLOSE_WEAK;
  c.fapl_size = sizeof(Config);
  c.fapl_get = fapl_get;
  c.fapl_copy = fapl_copy;
  c.fapl_free = fapl_free;
  c.open = open_file;
  c.close = close_file;
  c.query = query;
  c.get_eoa = get_eoa;
  c.set_eoa = set_eoa;
  c.get_eof = get_eof;
  c.get_handle = get_handle;
  c.read = read;
  c.write = write;
  c.truncate = truncate;
  const H5FD_mem_t map[H5FD_MEM_NTYPES] = H5FD_FLMAP_DICHOTOMY;
  std::memcpy(c.fl_map, map, sizeof map);
  return c;
}

hid_t driver_id() {
  static const H5FD_class_t cls = make_class();
  static hid_t id = -1;
  if (id < 0 || H5Iis_valid(id) <= 0) id = H5FDregister(&cls);
  return id;
}

}  // namespace

std::string OutputStatus::message() const {
  if (ok()) return "";
  std::string m = operation + " failed: " + std::strerror(error);
  if (error == ENOSPC || error == EFBIG || error == EDQUOT) m += " (disk full?)";
  return m;
}

hid_t output_file_access(OutputStatus* status) {
  const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  const hid_t drv = driver_id();
  if (fapl < 0 || drv < 0) {
    if (fapl >= 0) H5Pclose(fapl);
    fail("", "", "cannot set up HDF5's output driver");
  }
  const Config c{status};
  if (H5Pset_driver(fapl, drv, &c) < 0) {
    H5Pclose(fapl);
    fail("", "", "cannot set up HDF5's output driver");
  }
  return fapl;
}

}  // namespace kvsim::h5
