/* A stand-in for nbdkit's vddk plugin, built by the tests: VDDK cannot be redistributed, and
 * Debian's nbdkit has no vddk plugin. Like CDI's own test plugin it checks the importer's side
 * of the contract, then serves a disk file:
 *   - the keys CDI passes, and only those: libdir server user password thumbprint vm file
 *     (7), plus config (8), plus snapshot and transports (9 or 10); transports must be
 *     file:nbdssl:nbd when a snapshot is named;
 *   - the password, read the way nbdkit reads `password=-N` (from the inherited fd), must equal
 *     the content of LIBDIR/password;
 *   - the disk served is LIBDIR/disks/<file with '/', ' ', '[' and ']' as '_'>[@<snapshot>].raw,
 *     with its real allocation map as extents (SEEK_DATA/SEEK_HOLE);
 *   - it logs the lines the importer parses for the termination message: the VDDK version at
 *     load, and the ESXi host when a disk is opened;
 *   - faults on demand: LIBDIR/die-after-bytes (exit once that many bytes were read) and
 *     LIBDIR/delay-ms (a pause before every read).
 */
#define _GNU_SOURCE
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *libdir, *server, *user, *password, *thumbprint, *vm, *file, *snapshot,
    *transports, *config;
static int keys;
static char disk_path[4096];
static long long die_after = -1, delay_ms;
static long long bytes_read;

static int
set (char **slot, const char *value)
{
  if (*slot) {
    nbdkit_error ("a key was given twice");
    return -1;
  }
  *slot = strdup (value);
  keys++;
  return *slot ? 0 : -1;
}

static int
standin_config (const char *key, const char *value)
{
  if (strcmp (key, "password") == 0) {
    if (password) {
      nbdkit_error ("password given twice");
      return -1;
    }
    keys++;
    return nbdkit_read_password (value, &password);
  }
  if (strcmp (key, "libdir") == 0) return set (&libdir, value);
  if (strcmp (key, "server") == 0) return set (&server, value);
  if (strcmp (key, "user") == 0) return set (&user, value);
  if (strcmp (key, "thumbprint") == 0) return set (&thumbprint, value);
  if (strcmp (key, "vm") == 0) return set (&vm, value);
  if (strcmp (key, "file") == 0) return set (&file, value);
  if (strcmp (key, "snapshot") == 0) return set (&snapshot, value);
  if (strcmp (key, "transports") == 0) return set (&transports, value);
  if (strcmp (key, "config") == 0) return set (&config, value);
  nbdkit_error ("unexpected key %s (not one CDI passes)", key);
  return -1;
}

static long long
read_number (const char *name)
{
  char path[4096];
  snprintf (path, sizeof path, "%s/%s", libdir, name);
  FILE *f = fopen (path, "r");
  if (!f) return -1;
  long long n = -1;
  if (fscanf (f, "%lld", &n) != 1) n = -1;
  fclose (f);
  return n;
}

static int
standin_config_complete (void)
{
  int expected = 7 + (config != NULL) + 2 * (snapshot != NULL);
  if (!libdir || !server || !user || !password || !thumbprint || !vm || !file) {
    nbdkit_error ("missing one of libdir server user password thumbprint vm file");
    return -1;
  }
  if (keys != expected) {
    nbdkit_error ("%d keys, expected %d", keys, expected);
    return -1;
  }
  if ((snapshot == NULL) != (transports == NULL) ||
      (transports && strcmp (transports, "file:nbdssl:nbd") != 0)) {
    nbdkit_error ("snapshot and transports=file:nbdssl:nbd go together");
    return -1;
  }
  if (strncmp (vm, "moref=", 6) != 0) {
    nbdkit_error ("vm must be moref=<id>, got %s", vm);
    return -1;
  }
  char path[4096], want[1024] = "";
  snprintf (path, sizeof path, "%s/password", libdir);
  FILE *f = fopen (path, "r");
  if (!f || !fgets (want, sizeof want, f)) {
    nbdkit_error ("cannot read %s", path);
    if (f) fclose (f);
    return -1;
  }
  fclose (f);
  want[strcspn (want, "\n")] = 0;
  if (strcmp (want, password) != 0) {
    nbdkit_error ("Cannot connect to host %s: wrong password for user %s", server, user);
    return -1;
  }
  char name[2048];
  size_t i;
  snprintf (name, sizeof name, "%s", file);
  for (i = 0; name[i]; i++)
    if (name[i] == '/' || name[i] == ' ' || name[i] == '[' || name[i] == ']') name[i] = '_';
  snprintf (disk_path, sizeof disk_path, "%s/disks/%s%s%s.raw", libdir, name,
            snapshot ? "@" : "", snapshot ? snapshot : "");
  die_after = read_number ("die-after-bytes");
  delay_ms = read_number ("delay-ms");
  nbdkit_debug ("VMware VixDiskLib (7.0.3) Release build-21933544");
  return 0;
}

struct handle { int fd; };

static void *
standin_open (int readonly)
{
  struct handle *h = malloc (sizeof *h);
  if (!h) return NULL;
  h->fd = open (disk_path, O_RDONLY | O_CLOEXEC);
  if (h->fd < 0) {
    nbdkit_error ("cannot open %s: %m", disk_path);
    free (h);
    return NULL;
  }
  struct stat st;
  fstat (h->fd, &st);
  nbdkit_debug ("DISKLIB-LINK  : Opened 'vpxa-nfcssl://%s@esx-standin.example.test:902' (0xa): "
                "custom, %lld sectors / %lld MB.", file, (long long) st.st_size / 512,
                (long long) st.st_size >> 20);
  return h;
}

static void
standin_close (void *handle)
{
  struct handle *h = handle;
  close (h->fd);
  free (h);
}

static int64_t
standin_get_size (void *handle)
{
  struct handle *h = handle;
  struct stat st;
  if (fstat (h->fd, &st) < 0) return -1;
  return st.st_size;
}

static int
standin_pread (void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  if (delay_ms > 0) {
    struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000 };
    nanosleep (&ts, NULL);
  }
  if (die_after >= 0 &&
      __atomic_add_fetch (&bytes_read, count, __ATOMIC_SEQ_CST) > die_after) {
    fprintf (stderr, "vddk stand-in: dying after %lld bytes, as asked\n", die_after);
    _exit (1);
  }
  char *p = buf;
  while (count > 0) {
    ssize_t n = pread (h->fd, p, count, offset);
    if (n < 0) {
      nbdkit_error ("pread: %m");
      return -1;
    }
    if (n == 0) {
      memset (p, 0, count);
      break;
    }
    p += n; count -= n; offset += n;
  }
  return 0;
}

static int
standin_can_extents (void *handle)
{
  return 1;
}

static int
standin_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  uint64_t end = offset + count;
  while (offset < end) {
    off_t data = lseek (h->fd, offset, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) return -1;
      return nbdkit_add_extent (extents, offset, end - offset,
                                NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    }
    if ((uint64_t) data > offset) {
      uint64_t n = ((uint64_t) data < end ? (uint64_t) data : end) - offset;
      if (nbdkit_add_extent (extents, offset, n, NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) < 0)
        return -1;
      offset += n;
      continue;
    }
    off_t hole = lseek (h->fd, offset, SEEK_HOLE);
    uint64_t n = ((uint64_t) hole < end ? (uint64_t) hole : end) - offset;
    if (nbdkit_add_extent (extents, offset, n, 0) < 0) return -1;
    offset += n;
    if (!(flags & NBDKIT_FLAG_REQ_ONE) || n == 0) continue;
    break;
  }
  return 0;
}

static void
standin_unload (void)
{
  free (libdir); free (server); free (user); free (password); free (thumbprint);
  free (vm); free (file); free (snapshot); free (transports); free (config);
}

static struct nbdkit_plugin plugin = {
  .name = "vddk",
  .longname = "VDDK stand-in for the importer's tests",
  .version = "7.0.3",
  .config = standin_config,
  .config_complete = standin_config_complete,
  .magic_config_key = "file",
  .open = standin_open,
  .close = standin_close,
  .get_size = standin_get_size,
  .pread = standin_pread,
  .can_extents = standin_can_extents,
  .extents = standin_extents,
  .unload = standin_unload,
};

NBDKIT_REGISTER_PLUGIN (plugin)
