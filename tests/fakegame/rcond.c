/* The fake game's Source RCON port, written from the Valve Developer wiki's "Source RCON
 * Protocol" page: int32 size, int32 id, int32 type, NUL-terminated body, one empty NUL, all
 * little-endian. SERVERDATA_AUTH (3) gets an empty SERVERDATA_RESPONSE_VALUE (0) and then
 * SERVERDATA_AUTH_RESPONSE (2) with the request id, or -1 for a wrong password (then the
 * connection closes). SERVERDATA_EXECCOMMAND (2) gets RESPONSE_VALUE packets of at most 4096
 * bytes of body; an empty RESPONSE_VALUE from the client is mirrored, then followed by a packet
 * with body 00 00 00 01 00 00 00 00 (the wiki's end-of-reply trick).
 *
 * Commands the game itself runs (save, stop, say, join, leave, crash, ...) are written as one
 * line to the console FIFO the game script reads; `echo TEXT` and `big N` (N bytes, for
 * multi-packet replies) are answered here. Usage: rcond PORT FIFO; password in RCON_PASSWORD.
 * Built static by the tests (tests/engine.py) so it runs in the FROM scratch image. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BODY 4096

static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w <= 0) return -1;
        put += (size_t)w;
    }
    return 0;
}

static int send_packet(int fd, int32_t id, int32_t type, const char *body, size_t len) {
    unsigned char head[12];
    int32_t size = (int32_t)(len + 10);
    memcpy(head, &size, 4); /* x86 and arm64 are little-endian, as the protocol */
    memcpy(head + 4, &id, 4);
    memcpy(head + 8, &type, 4);
    if (write_full(fd, head, 12) < 0) return -1;
    if (len && write_full(fd, body, len) < 0) return -1;
    return write_full(fd, "\0\0", 2);
}

static int send_reply(int fd, int32_t id, const char *text, size_t len) {
    if (len == 0) return send_packet(fd, id, 0, "", 0);
    for (size_t at = 0; at < len; at += MAX_BODY) {
        size_t n = len - at < MAX_BODY ? len - at : MAX_BODY;
        if (send_packet(fd, id, 0, text + at, n) < 0) return -1;
    }
    return 0;
}

static void forward(const char *fifo, const char *command) {
    FILE *f = fopen(fifo, "w");
    if (!f) return;
    fprintf(f, "%s\n", command);
    fclose(f);
}

static void serve(int fd, const char *password, const char *fifo) {
    int authed = 0;
    for (;;) {
        int32_t size, id, type;
        if (read_full(fd, &size, 4) < 0 || size < 10 || size > MAX_BODY + 10) return;
        char *data = malloc((size_t)size + 1);
        if (!data || read_full(fd, data, (size_t)size) < 0) { free(data); return; }
        data[size] = 0;
        memcpy(&id, data, 4);
        memcpy(&type, data + 4, 4);
        const char *body = data + 8;
        size_t blen = strlen(body);
        if (type == 3) {
            authed = strcmp(body, password) == 0;
            send_packet(fd, id, 0, "", 0);
            send_packet(fd, authed ? id : -1, 2, "", 0);
            if (!authed) { free(data); return; }
        } else if (!authed) {
            free(data);
            return;
        } else if (type == 2) {
            if (strncmp(body, "echo ", 5) == 0) {
                send_reply(fd, id, body + 5, blen - 5);
            } else if (strncmp(body, "big ", 4) == 0) {
                long n = strtol(body + 4, NULL, 10);
                if (n < 0 || n > 1 << 20) n = 0;
                char *text = malloc((size_t)n + 1);
                for (long i = 0; i < n; i++) text[i] = "0123456789abcdef\n"[i % 17];
                send_reply(fd, id, text, (size_t)n);
                free(text);
            } else {
                forward(fifo, body);
                char reply[MAX_BODY];
                int n;
                if (strcmp(body, "save") == 0) n = snprintf(reply, sizeof reply, "Saving the world");
                else if (strcmp(body, "stop") == 0) n = snprintf(reply, sizeof reply, "Stopping the server");
                else n = snprintf(reply, sizeof reply, "Sent: %s", body);
                send_reply(fd, id, reply, (size_t)(n < (int)sizeof reply ? n : (int)sizeof reply - 1));
            }
        } else if (type == 0) {
            send_packet(fd, id, 0, "", 0);
            send_packet(fd, id, 0, "\0\0\0\1\0\0\0\0", 8);
        }
        free(data);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: rcond PORT FIFO\n");
        return 2;
    }
    const char *password = getenv("RCON_PASSWORD");
    if (!password || !*password) {
        fprintf(stderr, "rcond: RCON_PASSWORD is empty; RCON stays off\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 8) < 0) {
        perror("rcond");
        return 1;
    }
    printf("RCON listening on port %s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        serve(c, password, argv[2]);
        close(c);
    }
}
