/*
 * The native launcher: what `cni-plugins install --launcher native` puts in a CNI bin dir
 * under a plugin's type name. It is the Python launcher's fast path in C (cni_plugins/helper/
 * client.py is the reference implementation; the protocol is cni_plugins/helper/protocol.py):
 *
 *   - VERSION is answered here;
 *   - any other call is handed to this install's warm helper (the caller's stdin, stdout,
 *     stderr, network and mount namespaces and working directory as fds, its environment and
 *     umask), and the launcher exits with the plugin's status;
 *   - when no helper listens, it execs the Python launcher, which starts one (or runs the
 *     plugin itself); when a helper is there but does not take the call (it refused this
 *     caller, it is stuck, it belongs to other code), it execs the Python launcher with
 *     --run-here: the plugin runs in this process, nothing having been done for it yet.
 *
 * Who may be served is decided by the helper from the peer's credentials, whatever the
 * launcher; the request names this install, and a helper serves only its own.
 *
 * The install compiles this file once (config.h gives CNIPY_ACCEPT_WAIT_MS) and writes a copy per
 * plugin type with its configuration put into the `marker` note below (cni_plugins/helper/native.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"

#define PROTOCOL "cni-py-helper/2"
#define MAX_MESSAGE (1 << 20)
#define NO_HELPER (-1)
#define RUN_HERE (-2)

extern char **environ;

/* The configuration, in an ELF note near the start of the file: "\n# cni-py launcher: <type>
 * <package root>\n" (what cni_plugins.protocol.installed.read_marker looks for), then
 * "key=value\n" lines (type, socket, install, run_dir, fallback, versions). The install
 * overwrites the placeholder in each copy. */
#define CONFIG_SIZE 4096
#define PLACEHOLDER "\n# cni-py launcher: unconfigured\n"
__attribute__((used, section(".note.cnipy"), aligned(4))) static const struct {
    unsigned int namesz, descsz, type;
    char name[8];
    char desc[CONFIG_SIZE];
} marker = {sizeof "cni-py", CONFIG_SIZE, 1, "cni-py", PLACEHOLDER};

#define MAX_VERSIONS 32
static struct {
    char text[CONFIG_SIZE];
    const char *type, *socket, *install, *run_dir, *fallback;
    const char *versions[MAX_VERSIONS];
    int version_count;
    char versions_json[1024];
} cfg;

/* Parse the note's key=value lines; 0 when every key is there. */
static int load_config(void) {
    const char *desc = marker.desc;
    __asm__("" : "+r"(desc)); /* the note is rewritten after compiling: never fold the placeholder */
    memcpy(cfg.text, desc, CONFIG_SIZE);
    cfg.text[CONFIG_SIZE - 1] = 0;
    const char *list = NULL;
    for (char *line = cfg.text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = 0;
        const char *value = eq + 1;
        if (!strcmp(line, "type"))
            cfg.type = value;
        else if (!strcmp(line, "socket"))
            cfg.socket = value;
        else if (!strcmp(line, "install"))
            cfg.install = value;
        else if (!strcmp(line, "run_dir"))
            cfg.run_dir = value;
        else if (!strcmp(line, "fallback"))
            cfg.fallback = value;
        else if (!strcmp(line, "versions"))
            list = value;
    }
    if (!cfg.type || !cfg.socket || !cfg.install || !cfg.run_dir || !cfg.fallback || !list || !*list)
        return -1;
    static char versions[512];
    snprintf(versions, sizeof versions, "%s", list);
    size_t used = 0;
    for (char *v = strtok(versions, ","); v && cfg.version_count < MAX_VERSIONS; v = strtok(NULL, ",")) {
        cfg.versions[cfg.version_count++] = v;
        int n = snprintf(cfg.versions_json + used, sizeof cfg.versions_json - used, "%s\"%s\"", used ? ", " : "", v);
        if (n < 0 || (size_t)n >= sizeof cfg.versions_json - used)
            return -1;
        used += (size_t)n;
    }
    return cfg.version_count ? 0 : -1;
}

static void debug(const char *fmt, ...) {
    const char *on = getenv("CNI_PY_DEBUG");
    if (!on || !*on)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("cni-py launcher: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
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

/* The config's cniVersion if it is one we support, else the newest (as protocol.declared_version). */
static const char *declared_version(const char *data, size_t len) {
    static const char key[] = "\"cniVersion\"";
    const char *asked = cfg.versions[cfg.version_count - 1];
    const char *at = memmem(data, len, key, sizeof key - 1);
    if (!at)
        return asked;
    const char *p = at + sizeof key - 1, *end = data + len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != ':')
        return asked;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != '"')
        return asked;
    const char *q = memchr(p, '"', (size_t)(end - p));
    if (!q)
        return asked;
    for (int i = 0; i < cfg.version_count; i++)
        if (strlen(cfg.versions[i]) == (size_t)(q - p) && memcmp(cfg.versions[i], p, (size_t)(q - p)) == 0)
            return cfg.versions[i];
    return asked;
}

static int answer_version(void) {
    static char data[65536];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(0, data + len, sizeof data - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof data)
            break;
    }
    char out[1024];
    int n = snprintf(out, sizeof out, "{\"cniVersion\": \"%s\", \"supportedVersions\": [%s]}\n",
                     declared_version(data, len), cfg.versions_json);
    return n > 0 && (size_t)n < sizeof out && write_all(1, out, (size_t)n) == 0 ? 0 : 1;
}

/* Exec the Python launcher, with ``args`` (NULL-terminated; NULL: none); only returns (with
 * a CNI error on stdout) if that fails. */
static int run_python(char **args) {
    char *argv[64] = {(char *)cfg.fallback};
    for (int i = 0; args && args[i] && i < 62; i++)
        argv[i + 1] = args[i];
    execv(cfg.fallback, argv);
    int err = errno;
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "{\"cniVersion\": \"%s\", \"code\": 999, \"msg\": \"cni-py launcher: cannot run %s: %s\", "
                     "\"details\": \"run 'cni-plugins install' again\"}\n",
                     cfg.versions[cfg.version_count - 1], cfg.fallback, strerror(err));
    if (n > 0 && (size_t)n < sizeof out)
        write_all(1, out, (size_t)n);
    return 1;
}

static int append(char *buf, size_t *len, const char *s, size_t n) {
    if (*len + n + 1 > MAX_MESSAGE)
        return -1;
    memcpy(buf + *len, s, n);
    *len += n;
    return 0;
}

/* The request (protocol.encode_request): fields and environment items separated by NULs. */
static char *encode_request(size_t *len) {
    char *buf = malloc(MAX_MESSAGE);
    if (!buf)
        return NULL;
    mode_t mask = umask(022);
    umask(mask);
    char umask_text[16];
    snprintf(umask_text, sizeof umask_text, "%u", (unsigned)mask);
    const char *fields[] = {PROTOCOL, cfg.install, cfg.type, umask_text, cfg.run_dir};
    *len = 0;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if ((i && append(buf, len, "", 1)) || append(buf, len, fields[i], strlen(fields[i]))) {
            free(buf);
            return NULL;
        }
    }
    for (char **e = environ; *e; e++) {
        if (append(buf, len, "", 1) || append(buf, len, *e, strlen(*e))) {
            free(buf);
            return NULL;
        }
    }
    return buf;
}

static ssize_t recv_message(int sock, char *buf, size_t size) {
    ssize_t n;
    do
        n = recv(sock, buf, size, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

/* The call run by the helper: the plugin's exit status, NO_HELPER or RUN_HERE. */
static int via_helper(void) {
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return RUN_HERE;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(cfg.socket) >= sizeof addr.sun_path) {
        close(sock);
        return RUN_HERE;
    }
    strcpy(addr.sun_path, cfg.socket);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = errno;
        close(sock);
        if (err == ENOENT || err == ECONNREFUSED)
            return NO_HELPER;
        debug("helper at %s: %s; running here", cfg.socket, strerror(err));
        return RUN_HERE;
    }
    struct timeval wait = {.tv_sec = CNIPY_ACCEPT_WAIT_MS / 1000, .tv_usec = CNIPY_ACCEPT_WAIT_MS % 1000 * 1000};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    char answer[4096];
    ssize_t n = recv_message(sock, answer, sizeof answer - 1);
    if (n != 1 || answer[0] != 'A') {
        if (n > 0 && answer[0] == 'N') {
            answer[n] = 0;
            debug("helper at %s refused: %s; running here", cfg.socket, answer + 1);
        } else {
            debug("helper at %s: no worker took the call (%s); running here", cfg.socket,
                  n < 0 ? strerror(errno) : "it went away");
        }
        close(sock);
        return RUN_HERE;
    }
    struct timeval forever = {0, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);

    int fds[6] = {0, 1, 2, -1, -1, -1}; /* protocol.FDS */
    fds[3] = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    fds[4] = open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
    fds[5] = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    size_t len = 0;
    char *payload = fds[3] >= 0 && fds[4] >= 0 && fds[5] >= 0 ? encode_request(&len) : NULL;
    int sent = -1;
    if (payload) {
        char control[CMSG_SPACE(sizeof fds)];
        memset(control, 0, sizeof control);
        struct iovec iov = {.iov_base = payload, .iov_len = len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof fds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
        do
            sent = (int)sendmsg(sock, &msg, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        free(payload);
    }
    for (int i = 3; i < 6; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (sent < 0) { /* not delivered: the worker has nothing of ours */
        debug("helper at %s: the request was not sent; running here", cfg.socket);
        close(sock);
        return RUN_HERE;
    }

    const char *version = cfg.versions[cfg.version_count - 1];
    char told[64] = "";
    char reply[4096];
    n = recv_message(sock, reply, sizeof reply - 1);
    if (n > 0 && reply[0] == 'N') {
        reply[n] = 0;
        debug("helper at %s refused: %s; running here", cfg.socket, reply + 1);
        close(sock);
        return RUN_HERE;
    }
    if (n > 1 && reply[0] == 'V' && (size_t)n < sizeof told) {
        memcpy(told, reply + 1, (size_t)n - 1);
        told[n - 1] = 0;
        if (strspn(told, "0123456789.") == strlen(told))
            version = told;
        n = recv_message(sock, reply, sizeof reply - 1);
    }
    close(sock);
    int digits = n > 0;
    for (ssize_t i = 0; i < n; i++)
        digits = digits && reply[i] >= '0' && reply[i] <= '9';
    if (!digits) { /* the worker died mid-call: it may have read stdin, so the call cannot run again here */
        char out[512];
        int m = snprintf(out, sizeof out,
                         "{\"cniVersion\": \"%s\", \"code\": 999, \"msg\": \"cni-py helper: the plugin process died "
                         "before finishing\", \"details\": \"see the helper log (journal) or stderr\"}\n",
                         version);
        if (m > 0 && (size_t)m < sizeof out)
            write_all(1, out, (size_t)m);
        return 1;
    }
    reply[n] = 0;
    return atoi(reply);
}

int main(int argc, char **argv) {
    (void)argc;
    static char *run_here[] = {"--run-here", NULL};
    if (load_config() < 0) {
        static const char msg[] = "{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"cni-py launcher: not "
                                  "configured\", \"details\": \"run 'cni-plugins install' again\"}\n";
        write_all(1, msg, sizeof msg - 1);
        return 1;
    }
    const char *command = getenv("CNI_COMMAND");
    if (command && strcmp(command, "VERSION") == 0)
        return answer_version();
    if (!command || !command[0]) /* not a CNI call (``dhcp daemon``, or a person): the Python launcher's */
        return run_python(argv + 1);
    if (cfg.socket[0]) {
        int rc = via_helper();
        if (rc >= 0)
            return rc;
        return run_python(rc == RUN_HERE ? run_here : NULL);
    }
    return run_python(run_here);
}
