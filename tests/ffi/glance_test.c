/*
 * The C interface, from C: results on the fixture models (printed, one line per case, and
 * compared by tests/ffi/run.sh with tests/ffi/expected.txt, which tests/ffi.rs computes with the
 * Rust API), streaming, threads, and hostile calls (checked here; failures go to stderr and the
 * exit status).
 *
 * Usage: glance_test FIXTURES_DIR   (tests/fixtures)
 *
 * Each output line: CASE <tab> tokens=[...] <tab> truncated=BOOL <tab> streamed=N <tab>
 * text="..." (the JSON string, as glance wrote it).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glance.h"

static int failures = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            failures++;                                                    \
        }                                                                  \
    } while (0)

/* ---- a little JSON: glance's output is compact JSON with one top-level object ---- */

static const char *skip_string(const char *p) {
    p++; /* the opening quote */
    while (*p && *p != '"') {
        if (*p == '\\' && p[1]) p++;
        p++;
    }
    return *p ? p + 1 : p;
}

/* The end of the value starting at p: the ',' or '}' after it at depth 0. */
static const char *skip_value(const char *p) {
    int depth = 0;
    while (*p) {
        if (*p == '"') {
            p = skip_string(p);
            continue;
        }
        if (*p == '{' || *p == '[') depth++;
        else if (*p == '}' || *p == ']') {
            if (depth == 0) return p;
            depth--;
        } else if (*p == ',' && depth == 0) return p;
        p++;
    }
    return p;
}

/* The raw text of top-level member `key` of a JSON object (malloc'd), or NULL. */
static char *json_field(const char *json, const char *key) {
    const char *p = json;
    size_t klen = strlen(key);
    if (*p != '{') return NULL;
    p++;
    while (*p == '"') {
        const char *kstart = p + 1;
        const char *kend = skip_string(p) - 1;
        const char *value = kend + 2; /* past '":' */
        const char *end = skip_value(value);
        if ((size_t)(kend - kstart) == klen && memcmp(kstart, key, klen) == 0) {
            char *out = malloc((size_t)(end - value) + 1);
            memcpy(out, value, (size_t)(end - value));
            out[end - value] = 0;
            return out;
        }
        p = *end == ',' ? end + 1 : end;
    }
    return NULL;
}

static void put_utf8(char **out, unsigned long c) {
    unsigned char *o = (unsigned char *)*out;
    if (c < 0x80) *o++ = (unsigned char)c;
    else if (c < 0x800) {
        *o++ = (unsigned char)(0xC0 | (c >> 6));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        *o++ = (unsigned char)(0xE0 | (c >> 12));
        *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    } else {
        *o++ = (unsigned char)(0xF0 | (c >> 18));
        *o++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    }
    *out = (char *)o;
}

/* The text of a JSON string literal (malloc'd). */
static char *json_unescape(const char *lit) {
    size_t n = strlen(lit);
    char *out = malloc(n + 1), *o = out;
    const char *p = lit + 1, *end = lit + n - 1;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'b': *o++ = '\b'; p++; break;
        case 'f': *o++ = '\f'; p++; break;
        case 'n': *o++ = '\n'; p++; break;
        case 'r': *o++ = '\r'; p++; break;
        case 't': *o++ = '\t'; p++; break;
        case 'u': {
            unsigned long c = strtoul((char[5]){p[1], p[2], p[3], p[4], 0}, NULL, 16);
            p += 5;
            if (c >= 0xD800 && c < 0xDC00 && p[0] == '\\' && p[1] == 'u') {
                unsigned long lo = strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            put_utf8(&o, c);
            break;
        }
        default: *o++ = *p++; /* \" \\ \/ */
        }
    }
    *o = 0;
    return out;
}

/* ---- streaming ---- */

struct stream {
    char text[65536];
    size_t len;
    int tokens;
    int stop_after; /* 0: never */
};

static int on_token(const char *text, size_t len, uint32_t id, void *user_data) {
    struct stream *s = user_data;
    (void)id;
    CHECK(text != NULL && text[len] == 0, "token text is NUL-terminated");
    if (s->len + len < sizeof s->text) {
        memcpy(s->text + s->len, text, len);
        s->len += len;
        s->text[s->len] = 0;
    }
    s->tokens++;
    return s->stop_after > 0 && s->tokens >= s->stop_after;
}

/* ---- the cases ---- */

/* A made-up image, as tests/ffi.rs makes it: W x H, RGB or RGBA rows `stride` bytes apart,
 * the padding filled with 0xAB. */
enum { W = 37, H = 23 };

static uint8_t *synthetic(size_t channels, size_t stride) {
    uint8_t *buf = malloc(stride * H);
    memset(buf, 0xAB, stride * H);
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++) {
            uint8_t *px = buf + y * stride + x * channels;
            px[0] = (uint8_t)(x * 7 + y * 3);
            px[1] = (uint8_t)(x * x + y * 5);
            px[2] = (uint8_t)(x * y + 11);
            if (channels == 4) px[3] = (uint8_t)(x + y);
        }
    return buf;
}

struct model {
    const char *name;
    GlanceModel *handle;
};

static const char *fixtures;
static struct model models[3] = {{"trocr", NULL}, {"vitgpt2", NULL}, {"donut", NULL}};

static GlanceModel *model(const char *name) {
    for (int i = 0; i < 3; i++)
        if (strcmp(models[i].name, name) == 0) return models[i].handle;
    return NULL;
}

static char *image_path(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/images/%s", fixtures, name);
    return path;
}

/* Prints the case's line; returns the result JSON (to free), or NULL. */
static char *report(const char *name, char *json, struct stream *s) {
    if (json == NULL) {
        CHECK(0, "%s: %s", name, glance_last_error());
        return NULL;
    }
    CHECK(glance_last_error() == NULL, "%s: no error after success", name);
    char *tokens = json_field(json, "tokens"), *truncated = json_field(json, "truncated");
    char *text = json_field(json, "text");
    char *timings = json_field(json, "timings_ms"), *confidence = json_field(json, "confidence");
    CHECK(tokens && truncated && text && timings && confidence, "%s: fields in %s", name, json);
    if (tokens && truncated && text) {
        printf("%s\ttokens=%s\ttruncated=%s\tstreamed=%d\ttext=%s\n", name, tokens, truncated,
               s->tokens, text);
        /* Without a stop, the streamed pieces are the text. */
        if (s->stop_after == 0) {
            char *plain = json_unescape(text);
            CHECK(strcmp(plain, s->text) == 0, "%s: streamed \"%s\" != text \"%s\"", name,
                  s->text, plain);
            free(plain);
        }
    }
    free(tokens);
    free(truncated);
    free(text);
    free(timings);
    free(confidence);
    return json;
}

static void file_case(const char *name, const char *arch, const char *image, const char *options,
                      int stop_after) {
    struct stream s = {.stop_after = stop_after};
    char *json = glance_generate_file(model(arch), image_path(image), options, on_token, &s);
    glance_string_free(report(name, json, &s));
}

static void buffer_case(const char *name, size_t channels, size_t pad) {
    size_t stride = W * channels + pad;
    uint8_t *buf = synthetic(channels, stride);
    struct stream s = {0};
    char *json = glance_generate_rgb(model("trocr"), buf, stride * H, W, H, stride, channels,
                                     "{\"max_new_tokens\": 8}", on_token, &s);
    glance_string_free(report(name, json, &s));
    free(buf);
}

/* ---- threads: one model, several threads at once ---- */

struct job {
    const char *image; /* image_path() writes a static buffer: not from the threads */
    char *json;
    char *error; /* glance_last_error() of that thread, copied: it is thread-local */
};

static void *thread_main(void *arg) {
    struct job *job = arg;
    job->json = glance_generate_file(model("trocr"), job->image,
                                     "{\"max_new_tokens\": 8, \"num_beams\": 1}", NULL, NULL);
    const char *error = glance_last_error();
    job->error = NULL;
    if (error) {
        job->error = malloc(strlen(error) + 1);
        strcpy(job->error, error);
    }
    return NULL;
}

static void threads_case(void) {
    char *alone = glance_generate_file(model("trocr"), image_path("rgb.png"),
                                       "{\"max_new_tokens\": 8, \"num_beams\": 1}", NULL, NULL);
    char *want = alone ? json_field(alone, "tokens") : NULL;
    /* The path is written once, before any thread reads it. */
    const char *image = image_path("rgb.png");
    struct job jobs[3];
    pthread_t threads[3];
    for (int i = 0; i < 3; i++) {
        jobs[i].image = image;
        pthread_create(&threads[i], NULL, thread_main, &jobs[i]);
    }
    int same = want != NULL;
    for (int i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        char *got = jobs[i].json ? json_field(jobs[i].json, "tokens") : NULL;
        int ok = want && got && strcmp(got, want) == 0;
        /* Say what differed: a failed call's error, or both token lists. */
        CHECK(ok, "thread %d: %s (alone: %s)", i,
              got ? got : (jobs[i].error ? jobs[i].error : "(no error)"), want ? want : "(failed)");
        same = same && ok;
        free(jobs[i].error);
        free(got);
        glance_string_free(jobs[i].json);
    }
    CHECK(same, "the threads got what one thread gets");
    printf("threads\t%s\n", same ? "same" : "DIFFERENT");
    free(want);
    glance_string_free(alone);
}

/* ---- hostile calls ---- */

static int error_names(const char *what) {
    const char *e = glance_last_error();
    return e != NULL && strstr(e, what) != NULL;
}

#define EXPECT_ERROR(call, what)                                                      \
    do {                                                                              \
        CHECK((call) == NULL, "fails");                                               \
        CHECK(error_names(what), "error names \"%s\": %s", what,                      \
              glance_last_error() ? glance_last_error() : "(none)");                  \
    } while (0)

static int stop_at_once(const char *text, size_t len, uint32_t id, void *user_data) {
    (void)text, (void)len, (void)id;
    ++*(int *)user_data;
    return 1;
}

static void hostile(void) {
    GlanceModel *m = model("trocr");
    const char *rgb = image_path("rgb.png");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/trocr", fixtures);

    /* Opening. */
    EXPECT_ERROR(glance_model_open(NULL, NULL), "dir is NULL");
    EXPECT_ERROR(glance_model_open("/nonexistent/glance-model", NULL), "/nonexistent/glance-model");
    EXPECT_ERROR(glance_model_open("\xff\xfe", NULL), "UTF-8");
    EXPECT_ERROR(glance_model_open(dir, "{not json"), "not valid JSON");
    EXPECT_ERROR(glance_model_open(dir, "{\"thread\": 1}"), "\"thread\"");
    EXPECT_ERROR(glance_model_open(dir, "{\"threads\": \"many\"}"), "\"threads\"");
    EXPECT_ERROR(glance_model_open(dir, "{\"dtype\": \"fp64\"}"), "\"dtype\"");
    EXPECT_ERROR(glance_model_open(dir, "\"\xff\""), "UTF-8");

    /* Generating from a file. */
    EXPECT_ERROR(glance_generate_file(NULL, rgb, NULL, NULL, NULL), "NULL");
    EXPECT_ERROR(glance_generate_file(m, NULL, NULL, NULL, NULL), "path is NULL");
    EXPECT_ERROR(glance_generate_file(m, "\xc3\x28.png", NULL, NULL, NULL), "UTF-8");
    EXPECT_ERROR(glance_generate_file(m, "/nonexistent.png", NULL, NULL, NULL), "/nonexistent.png");
    EXPECT_ERROR(glance_generate_file(m, dir, NULL, NULL, NULL), "trocr");
    EXPECT_ERROR(glance_generate_file(m, rgb, "[1, 2]", NULL, NULL), "JSON object");
    EXPECT_ERROR(glance_generate_file(m, rgb, "{\"max_new_token\": 3}", NULL, NULL),
                 "\"max_new_token\"");
    EXPECT_ERROR(glance_generate_file(m, rgb, "{\"num_beams\": -2}", NULL, NULL), "\"num_beams\"");
    EXPECT_ERROR(glance_generate_file(m, rgb, "{\"num_beams\": 0}", NULL, NULL), "num_beams");
    EXPECT_ERROR(glance_generate_file(m, rgb, "{\"resolution\": \"huge\"}", NULL, NULL),
                 "\"resolution\"");
    EXPECT_ERROR(glance_generate_file(m, rgb, "{\"max_new_tokens\": 3", NULL, NULL), "JSON");

    /* Generating from a buffer: sizes. */
    uint8_t px[64 * 3] = {0};
    EXPECT_ERROR(glance_generate_rgb(m, NULL, 12, 2, 2, 6, 3, NULL, NULL, NULL), "pixels is NULL");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 0, 2, 6, 3, NULL, NULL, NULL), "empty");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 2, 0, 6, 3, NULL, NULL, NULL), "empty");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 2, 2, 6, 2, NULL, NULL, NULL), "channels");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 2, 2, 6, 5, NULL, NULL, NULL), "channels");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 4, 2, 11, 3, NULL, NULL, NULL), "stride");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 8, 9, 24, 3, NULL, NULL, NULL),
                 "holds 192 bytes");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, SIZE_MAX, 2, SIZE_MAX, 3, NULL, NULL, NULL),
                 "overflows");
    /* The pixel limit is checked before the byte count, so a huge height is named by it. */
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 2, SIZE_MAX, SIZE_MAX / 2, 3, NULL, NULL,
                                     NULL),
                 "more than the limit");
    EXPECT_ERROR(glance_generate_rgb(m, px, sizeof px, 20000, 20000, 60000, 3, NULL, NULL, NULL),
                 "limit");
    EXPECT_ERROR(glance_generate_rgb(NULL, px, sizeof px, 2, 2, 6, 3, NULL, NULL, NULL), "NULL");

    /* A callback that stops at once: one token, truncated. */
    int calls = 0;
    char *json = glance_generate_file(m, rgb, "{\"max_new_tokens\": 8, \"num_beams\": 1}",
                                      stop_at_once, &calls);
    CHECK(json != NULL, "stopped generation succeeds: %s", glance_last_error());
    CHECK(calls == 1, "one call, got %d", calls);
    char *truncated = json ? json_field(json, "truncated") : NULL;
    CHECK(truncated && strcmp(truncated, "true") == 0, "truncated: %s", json);
    free(truncated);

    /* Strings: NULL, double free, pointers glance did not make. */
    glance_string_free(NULL);
    CHECK(glance_last_error() == NULL, "freeing NULL is fine");
    glance_string_free(json);
    CHECK(glance_last_error() == NULL, "free");
    glance_string_free(json);
    CHECK(error_names("freed already"), "double free reported");
    char local[] = "not from glance";
    glance_string_free(local);
    CHECK(error_names("not a string from glance"), "foreign string reported");

    /* The model's pixel limit applies to buffers, before any pixel is read. */
    GlanceModel *small = glance_model_open(dir, "{\"threads\": 1, \"max_image_pixels\": 100}");
    CHECK(small != NULL, "open with max_image_pixels: %s", glance_last_error());
    uint8_t *image = synthetic(3, W * 3);
    EXPECT_ERROR(glance_generate_rgb(small, image, W * 3 * H, W, H, W * 3, 3, NULL, NULL, NULL),
                 "pixels, more than the limit of 100");
    free(image);
    CHECK(glance_model_close(small) == 0, "close");

    /* Handles: close, double close, use after close, made-up handles. */
    GlanceModel *extra = glance_model_open(dir, "{\"threads\": 1}");
    CHECK(extra != NULL, "open: %s", glance_last_error());
    CHECK(glance_model_close(extra) == 0, "close");
    CHECK(glance_model_close(extra) == -1, "double close fails");
    CHECK(error_names("not an open model"), "double close reported");
    EXPECT_ERROR(glance_generate_file(extra, rgb, NULL, NULL, NULL), "not an open model");
    CHECK(glance_model_close(NULL) == 0, "closing NULL is fine");
    CHECK(glance_model_close((GlanceModel *)(uintptr_t)0xdeadbeef) == -1, "made-up handle");
    EXPECT_ERROR(glance_generate_file((GlanceModel *)(uintptr_t)0x10, rgb, NULL, NULL, NULL),
                 "not an open model");

    CHECK(glance_version() != NULL && strlen(glance_version()) > 0, "version");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR\n", argv[0]);
        return 2;
    }
    fixtures = argv[1];
    for (int i = 0; i < 3; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/models/%s", fixtures, models[i].name);
        models[i].handle = glance_model_open(dir, "{\"threads\": 1}");
        if (models[i].handle == NULL) {
            fprintf(stderr, "FAIL: cannot open %s: %s\n", dir, glance_last_error());
            return 1;
        }
    }

    file_case("trocr_rgb_greedy", "trocr", "rgb.png", "{\"max_new_tokens\": 8, \"num_beams\": 1}", 0);
    file_case("trocr_gray_beams3", "trocr", "gray.png", "{\"max_new_tokens\": 8, \"num_beams\": 3}", 0);
    file_case("trocr_rgb_stop3", "trocr", "rgb.png", "{\"max_new_tokens\": 8, \"num_beams\": 1}", 3);
    file_case("trocr_rgb_budget0", "trocr", "rgb.png", "{\"max_new_tokens\": 8, \"time_budget_ms\": 0}", 0);
    file_case("vitgpt2_wide_greedy", "vitgpt2", "wide.jpg", "{\"max_new_tokens\": 10}", 0);
    file_case("vitgpt2_rgba_beams2", "vitgpt2", "rgba.png", "{\"max_new_tokens\": 6, \"num_beams\": 2}", 0);
    file_case("donut_palette_greedy", "donut", "palette.png", "{\"max_new_tokens\": 8}", 0);
    buffer_case("trocr_buffer_rgb", 3, 5);
    buffer_case("trocr_buffer_rgba", 4, 3);
    threads_case();

    hostile();

    for (int i = 0; i < 3; i++) CHECK(glance_model_close(models[i].handle) == 0, "close");
    CHECK(glance_model_close(models[0].handle) == -1, "double close");
    if (failures) {
        fprintf(stderr, "glance_test: %d check(s) failed\n", failures);
        return 1;
    }
    fprintf(stderr, "glance_test: all checks passed\n");
    return 0;
}
