/*
 * glance: read an image, write text, on a CPU, offline (C interface).
 *
 * Link with libglance.so (-lglance) or libglance.a (with -Wl,-z,noexecstack -lgcc_s -lutil -lrt
 * -lpthread -lm -ldl -lc: tract has assembly objects without a .note.GNU-stack section).
 *
 * - Calls that fail return NULL (or -1) and leave a description in glance_last_error(), a
 *   string per thread that stays valid until the next glance call on that thread.
 * - Strings glance returns are freed with glance_string_free(), never with free().
 * - Options are JSON objects (NULL for the defaults); unknown keys are errors.
 * - Threads: one GlanceModel may be used from several threads at once.
 * - NULL pointers, strings that are not UTF-8, bad JSON, impossible image sizes, closed or
 *   double-closed models and double frees are reported errors, never crashes; what glance
 *   cannot check is that a non-NULL pointer points to what the caller says it does.
 */


#ifndef GLANCE_H
#define GLANCE_H

/* Generated from src/ffi.rs by scripts/gen-header.sh (cbindgen); do not edit. */

#include <stddef.h>
#include <stdint.h>

/*
 An open model. Opaque: a handle from `glance_model_open`, valid until `glance_model_close`.

 Thread safety: one model may be used from several threads at once (generations run in
 parallel and share its weights). Closing it while another thread generates with it is safe:
 the model is freed when that generation returns. Handles are ids that are never reused, so
 using a closed handle is an error (NULL or -1 and `glance_last_error`), not a crash.
 */
typedef struct GlanceModel GlanceModel;

/*
 Called with each token as it is chosen: `text` is the text the token adds (UTF-8, `len`
 bytes, NUL-terminated, valid only during the call; it may be empty when a character spans
 several tokens), `id` the token id, `user_data` what the caller passed. Return 0 to go on,
 anything else to stop: generation then ends and the result says `"truncated": true`. With
 beam search (`num_beams` > 1, which a model's generation_config.json may set) the tokens are
 only known when the search ends: they are reported then, and a nonzero return only stops the
 reporting. The callback runs on the calling thread, before the generate call returns.
 */
typedef int (*GlanceTokenCallback)(const char *text, size_t len, uint32_t id, void *user_data);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/*
 Opens a model directory (Optimum layout, or transformers.js with graphs under `onnx/`).

 `options_json` may be NULL or a JSON object with any of `"threads"` (threads for matrix
 products; default: the CPUs available), `"dtype"` (`"fp32"`, `"fp16"`, `"q8"`, `"int8"`,
 `"uint8"`, `"q4"`), `"decoder"` (`"split"`, `"merged"`, `"no-past"`), `"compute"`
 (`"auto"`, `"f32"`, `"int8"`, `"f16"`), `"max_image_pixels"` (the largest image taken;
 default 100000000). Unknown keys are errors.

 Returns a handle for the other calls, to be closed with `glance_model_close`, or NULL on
 error (see `glance_last_error`).

 # Safety
 `dir` and `options_json` are NULL or NUL-terminated strings.
 */
struct GlanceModel *glance_model_open(const char *dir, const char *options_json);

/*
 Closes a model. Returns 0, or -1 if `model` is not an open model (closed already, or not
 from `glance_model_open`; nothing happens then). NULL is accepted and does nothing.
 A generation running in another thread with this model finishes first.
 */
int glance_model_close(struct GlanceModel *model);

/*
 Generates text for an image file (PNG, JPEG, and the other formats glance reads).

 `options_json` may be NULL or a JSON object with any of the generation settings of Hugging
 Face's `generate()` that glance knows (`"max_new_tokens"`, `"max_length"`,
 `"min_new_tokens"`, `"min_length"`, `"num_beams"`, `"num_return_sequences"`,
 `"length_penalty"`, `"early_stopping"` (true, false or "never"), `"no_repeat_ngram_size"`,
 `"repetition_penalty"`, `"bad_words_ids"`, `"forced_bos_token_id"`,
 `"forced_eos_token_id"`, `"decoder_start_token_id"`, `"bos_token_id"`, `"eos_token_id"`,
 `"pad_token_id"`) and `"prompt"` (text the decoder starts from), `"keep_special_tokens"`,
 `"ignore_generation_config"`, `"time_budget_ms"`, `"resolution"` (`"native"`,
 `"keep_aspect"` or `{"height": H, "width": W}`). Unknown keys are errors.

 `callback` may be NULL; otherwise it is called with each token (see
 `GlanceTokenCallback`) and `user_data`.

 Returns the result as a JSON object, to be freed with `glance_string_free`:
 `{"text", "tokens", "score", "confidence", "truncated", "timings_ms": {"preprocess",
 "encode", "decode"}}`, plus `"sequences": [{"tokens", "text", "score"}]` when
 `num_return_sequences` > 1 (the same object as `glance run --json`, without `"image"`).
 Returns NULL on error (see `glance_last_error`).

 # Safety
 `path` and `options_json` are NULL or NUL-terminated strings; `callback`, if not NULL, is a
 function that may be called with `user_data`.
 */
char *glance_generate_file(struct GlanceModel *model,
                           const char *path,
                           const char *options_json,
                           GlanceTokenCallback callback,
                           void *user_data);

/*
 Generates text for an image in memory: `height` rows of `width` pixels, `stride` bytes from
 one row to the next, each pixel `channels` bytes: 3 (R, G, B) or 4 (R, G, B, A; alpha is
 ignored, as Pillow's `convert("RGB")` does). `pixels` holds `len` bytes, at least
 `stride * (height - 1) + width * channels`. Sizes that are zero, overflow, exceed the
 model's pixel limit (`max_image_pixels`, 100 megapixels by default) or do not fit in `len`
 are errors, found before any pixel is read.

 Options, callback and result as `glance_generate_file`.

 # Safety
 `pixels` is NULL or points to `len` readable bytes; `options_json` and `callback` as
 `glance_generate_file`.
 */
char *glance_generate_rgb(struct GlanceModel *model,
                          const uint8_t *pixels,
                          size_t len,
                          size_t width,
                          size_t height,
                          size_t stride,
                          size_t channels,
                          const char *options_json,
                          GlanceTokenCallback callback,
                          void *user_data);

/*
 Frees a string returned by glance. NULL does nothing; a pointer glance did not return, or
 freed already, is left alone and reported in `glance_last_error` (as long as glance has not
 handed out the same address again since).
 */
void glance_string_free(char *s);

/*
 The text of the last error on this thread, or NULL if the last call succeeded. The string
 belongs to glance: it stays valid until the next glance call on this thread.
 */
const char *glance_last_error(void);

/*
 glance's version, such as `"0.1.0"` (a static string).
 */
const char *glance_version(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* GLANCE_H */
