/*
 * cdi-containerimage-server: the node-pull sidecar of CDI's importer pod (cdi-contract.md 4.4.5).
 *
 * It runs inside the user's container-disk image, which is usually FROM scratch: no shell, no
 * libc, no Python. So it is a static C program (CDI ships a static Go binary; no Go toolchain
 * is available to this project), built with `gcc -static` and copied into the pod by the init
 * container (`cp /usr/bin/cdi-containerimage-server /shared/server`).
 *
 *   server -p PORT -image-dir DIR -ready-file FILE -done-file FILE
 *
 * Refuses bootc/ostree images (/sysroot or /ostree present); DIR must hold exactly one regular
 * file. Listens on localhost:PORT: GET /info answers {"env":[...this process's environment...]},
 * GET or HEAD /<file> serves the image with single-range support (Range: bytes=a-b, a-, -n)
 * over persistent HTTP/1.1 connections, one process per connection. Writes the file name into
 * the ready file, then polls for the done file every second and exits 0 once it appears,
 * removing both.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *image_dir = "/disk";
static char image_name[1024];

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("cdi-containerimage-server: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The one regular file of the image directory, or exit with CDI's reasons. */
static void find_image(void) {
    DIR *d = opendir(image_dir);
    if (!d)
        die("image directory %s does not exist: %s", image_dir, strerror(errno));
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", image_dir, e->d_name);
        if (lstat(path, &st) != 0)
            die("cannot stat %s: %s", path, strerror(errno));
        if (S_ISDIR(st.st_mode))
            die("image directory contains another directory: %s", e->d_name);
        if (!S_ISREG(st.st_mode))
            die("image directory contains a file that is not a regular file: %s", e->d_name);
        if (++files > 1)
            die("image directory contains more than one file");
        if (strlen(e->d_name) >= sizeof image_name)
            die("image file name too long");
        strcpy(image_name, e->d_name);
    }
    closedir(d);
    if (files == 0)
        die("image file does not exist in image directory - directory is empty");
}

static void send_status(int fd, int code, const char *reason, const char *extra) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n%sConnection: keep-alive\r\n\r\n",
                     code, reason, extra ? extra : "");
    write_all(fd, buf, (size_t)n);
}

/* {"env":["K=V",...]}: JSON strings escaped byte by byte (control characters as \u00XX). */
static void send_info(int fd, int head) {
    size_t cap = 4096, len = 0;
    char *body = malloc(cap);
    if (!body)
        die("out of memory");
#define PUT(c) do { if (len + 8 >= cap) { cap *= 2; body = realloc(body, cap); \
                    if (!body) die("out of memory"); } body[len++] = (c); } while (0)
    const char *open = "{\"env\":[";
    for (const char *p = open; *p; p++)
        PUT(*p);
    for (char **e = environ; *e; e++) {
        if (e != environ)
            PUT(',');
        PUT('"');
        for (const unsigned char *p = (const unsigned char *)*e; *p; p++) {
            if (*p == '"' || *p == '\\') {
                PUT('\\');
                PUT((char)*p);
            } else if (*p < 0x20) {
                char esc[8];
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                for (char *q = esc; *q; q++)
                    PUT(*q);
            } else {
                PUT((char)*p);
            }
        }
        PUT('"');
    }
    PUT(']');
    PUT('}');
#undef PUT
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: keep-alive\r\n\r\n", len);
    write_all(fd, hdr, (size_t)n);
    if (!head)
        write_all(fd, body, len);
    free(body);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decoded path without the leading slash; -1 when malformed. */
static int decode_path(const char *in, char *out, size_t cap) {
    size_t o = 0;
    if (*in == '/')
        in++;
    for (; *in && *in != '?'; in++) {
        char c = *in;
        if (c == '%') {
            int hi = hexval(in[1]), lo = hi < 0 ? -1 : hexval(in[2]);
            if (lo < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            in += 2;
        }
        if (o + 1 >= cap || c == '\0')
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

/* Parse "bytes=a-b" / "a-" / "-n" against size; 0 ok, 1 no range, -1 unsatisfiable. */
static int parse_range(const char *value, off_t size, off_t *start, off_t *end) {
    if (!value)
        return 1;
    while (*value == ' ')
        value++;
    if (strncasecmp(value, "bytes=", 6) != 0 || strchr(value, ','))
        return 1; /* other units and multiple ranges: answer with the whole file */
    const char *p = value + 6;
    char *q;
    if (*p == '-') {
        long long n = strtoll(p + 1, &q, 10);
        if (q == p + 1 || n <= 0)
            return -1;
        *start = n >= size ? 0 : size - n;
        *end = size - 1;
    } else {
        long long a = strtoll(p, &q, 10);
        if (q == p || *q != '-' || a < 0)
            return 1;
        p = q + 1;
        long long b = size - 1;
        if (*p) {
            b = strtoll(p, &q, 10);
            if (q == p || b < a)
                return 1;
        }
        if (a >= size)
            return -1;
        if (b >= size)
            b = size - 1;
        *start = a;
        *end = b;
    }
    return size == 0 ? -1 : 0;
}

static int send_file(int fd, const char *name, int head, const char *range) {
    if (strcmp(name, image_name) != 0) {
        send_status(fd, 404, "Not Found", NULL);
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", image_dir, name);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (f < 0 || fstat(f, &st) != 0) {
        if (f >= 0)
            close(f);
        send_status(fd, 404, "Not Found", NULL);
        return 0;
    }
    off_t start = 0, end = st.st_size - 1;
    int r = parse_range(range, st.st_size, &start, &end);
    char hdr[512];
    int n;
    if (r < 0) {
        char extra[96];
        snprintf(extra, sizeof extra, "Content-Range: bytes */%lld\r\n", (long long)st.st_size);
        close(f);
        send_status(fd, 416, "Range Not Satisfiable", extra);
        return 0;
    }
    if (r == 0) {
        n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
                     "Accept-Ranges: bytes\r\nContent-Range: bytes %lld-%lld/%lld\r\n"
                     "Content-Length: %lld\r\nConnection: keep-alive\r\n\r\n",
                     (long long)start, (long long)end, (long long)st.st_size,
                     (long long)(end - start + 1));
    } else {
        start = 0;
        end = st.st_size - 1;
        n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     "Accept-Ranges: bytes\r\nContent-Length: %lld\r\nConnection: keep-alive\r\n\r\n",
                     (long long)st.st_size);
    }
    if (write_all(fd, hdr, (size_t)n) != 0) {
        close(f);
        return -1;
    }
    if (!head) {
        off_t off = start;
        while (off <= end) {
            size_t want = (size_t)(end - off + 1) > (1u << 30) ? (1u << 30) : (size_t)(end - off + 1);
            ssize_t s = sendfile(fd, f, &off, want);
            if (s < 0 && errno == EINTR)
                continue;
            if (s <= 0) {
                close(f);
                return -1;
            }
        }
    }
    close(f);
    return 0;
}

/* Requests on one connection until the client closes it. */
static void serve(int fd) {
    char buf[16384];
    size_t have = 0;
    for (;;) {
        char *eoh;
        while (!(eoh = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == sizeof buf)
                return; /* headers too large */
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, 300000) <= 0)
                return; /* idle for 5 minutes */
            ssize_t n = read(fd, buf + have, sizeof buf - have);
            if (n <= 0)
                return;
            have += (size_t)n;
        }
        *eoh = '\0';
        size_t used = (size_t)(eoh + 4 - buf);
        char method[16], target[4096], version[16];
        if (sscanf(buf, "%15s %4095s %15s", method, target, version) != 3) {
            send_status(fd, 400, "Bad Request", NULL);
            return;
        }
        const char *range = NULL;
        int close_after = strcmp(version, "HTTP/1.0") == 0;
        char *line = strstr(buf, "\r\n");
        while (line) {
            line += 2; /* past the "\r\n", or past the "\0\n" left by the split below */
            char *next = strstr(line, "\r\n");
            if (next)
                *next = '\0';
            if (strncasecmp(line, "Range:", 6) == 0)
                range = line + 6;
            else if (strncasecmp(line, "Connection:", 11) == 0 && strcasestr(line + 11, "close"))
                close_after = 1;
            line = next;
        }
        int head = strcmp(method, "HEAD") == 0;
        char name[2048];
        int rc = 0;
        if (!head && strcmp(method, "GET") != 0) {
            send_status(fd, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
        } else if (decode_path(target, name, sizeof name) != 0 || strchr(name, '/')) {
            send_status(fd, 404, "Not Found", NULL);
        } else if (strcmp(name, "info") == 0) {
            send_info(fd, head);
        } else {
            rc = send_file(fd, name, head, range);
        }
        if (rc != 0 || close_after)
            return;
        memmove(buf, buf + used, have - used);
        have -= used;
    }
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int main(int argc, char **argv) {
    const char *ready = NULL, *done = NULL;
    int port = 8100;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        while (*a == '-')
            a++;
        if (!strcmp(a, "h") || !strcmp(a, "help")) {  /* Go's flag package: usage, exit 0 */
            printf("usage: %s -p PORT -image-dir DIR -ready-file FILE -done-file FILE\n"
                   "The node-pull sidecar of CDI's importer pod: serves the one file in DIR "
                   "(default /disk) on localhost:PORT (default 8100) until the done file "
                   "appears.\n", argv[0]);
            return 0;
        }
        char *eq = strchr(a, '=');
        char key[32];
        const char *val;
        if (eq) {
            snprintf(key, sizeof key, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(key, sizeof key, "%s", a);
            if (i + 1 >= argc)
                die("flag -%s needs a value", key);
            val = argv[++i];
        }
        if (!strcmp(key, "p"))
            port = atoi(val);
        else if (!strcmp(key, "image-dir"))
            image_dir = val;
        else if (!strcmp(key, "ready-file"))
            ready = val;
        else if (!strcmp(key, "done-file"))
            done = val;
        else
            die("unknown flag -%s (use -p, -image-dir, -ready-file, -done-file)", key);
    }
    if (!ready || !done || port <= 0 || port > 65535)
        die("usage: %s -p PORT -image-dir DIR -ready-file FILE -done-file FILE", argv[0]);
    if (exists("/sysroot") || exists("/ostree"))
        die("bootc image detected: this image contains an ostree-based bootable OS and cannot be "
            "served as a container disk");
    find_image();

    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 64) != 0)
        die("cannot listen on 127.0.0.1:%d: %s", port, strerror(errno));

    struct sigaction sa = {0};
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = SA_NOCLDWAIT; /* connection processes are reaped by the kernel */
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int fd = open(ready, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, image_name, strlen(image_name)) != 0 || close(fd) != 0)
        die("cannot write the ready file %s: %s", ready, strerror(errno));
    fprintf(stderr, "cdi-containerimage-server: serving %s/%s on 127.0.0.1:%d\n", image_dir,
            image_name, port);

    for (;;) {
        struct pollfd p = {s, POLLIN, 0};
        int n = poll(&p, 1, 1000);
        if (exists(done))
            break;
        if (n <= 0)
            continue;
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pid_t pid = fork();
        if (pid == 0) {
            close(s);
            serve(c);
            _exit(0);
        }
        close(c);
    }
    unlink(ready);
    unlink(done);
    fprintf(stderr, "cdi-containerimage-server: done file seen, exiting\n");
    return 0;
}
