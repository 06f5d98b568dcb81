// spm_impl.cc — the C++ half of core/spm.c: Debian's libsentencepiece (sentencepiece_processor.h,
// sentencepiece_trainer.h) behind a few extern "C" functions with plain types, so the rest of the
// core stays C. Compiled only when CMake finds libsentencepiece (TERN_HAVE_SENTENCEPIECE).
// Errors come back as a message in err (errlen bytes, NUL-terminated); no exception leaves here.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
void set_err(char *err, size_t errlen, const std::string &msg) {
    if (errlen == 0) return;
    std::snprintf(err, errlen, "%s", msg.c_str());
}
} // namespace

extern "C" {

void *tern_spm_impl_load(const char *path, char *err, size_t errlen) {
    try {
        auto *sp = new sentencepiece::SentencePieceProcessor();
        const auto st = sp->Load(path);
        if (!st.ok()) {
            set_err(err, errlen, st.ToString());
            delete sp;
            return nullptr;
        }
        return sp;
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
        return nullptr;
    }
}

void tern_spm_impl_free(void *h) { delete static_cast<sentencepiece::SentencePieceProcessor *>(h); }

int32_t tern_spm_impl_size(const void *h) {
    return static_cast<const sentencepiece::SentencePieceProcessor *>(h)->GetPieceSize();
}

// 0 normal, 1 unknown, 2 control, 3 unused, 4 byte
int32_t tern_spm_impl_kind(const void *h, int32_t id) {
    const auto *sp = static_cast<const sentencepiece::SentencePieceProcessor *>(h);
    if (sp->IsUnknown(id)) return 1;
    if (sp->IsControl(id)) return 2;
    if (sp->IsUnused(id)) return 3;
    if (sp->IsByte(id)) return 4;
    return 0;
}

// The id of piece, or -1 when the vocabulary does not hold it.
int32_t tern_spm_impl_piece_to_id(const void *h, const char *piece) {
    const auto *sp = static_cast<const sentencepiece::SentencePieceProcessor *>(h);
    const int id = sp->PieceToId(piece);
    return sp->IdToPiece(id) == piece ? id : -1;
}

// Copies the piece of id into out (cap bytes, NUL-terminated when it fits); returns its length.
int64_t tern_spm_impl_piece(const void *h, int32_t id, char *out, int64_t cap) {
    const std::string &p = static_cast<const sentencepiece::SentencePieceProcessor *>(h)->IdToPiece(id);
    if ((int64_t)p.size() < cap) std::memcpy(out, p.c_str(), p.size() + 1);
    return (int64_t)p.size();
}

// Encodes text into ids (at most cap written); returns how many ids the text has, or -1 (err).
int64_t tern_spm_impl_encode(const void *h, const char *text, int32_t *ids, int64_t cap, char *err,
                             size_t errlen) {
    try {
        std::vector<int> v;
        const auto st = static_cast<const sentencepiece::SentencePieceProcessor *>(h)->Encode(text, &v);
        if (!st.ok()) {
            set_err(err, errlen, st.ToString());
            return -1;
        }
        for (size_t i = 0; i < v.size() && (int64_t)i < cap; i++) ids[i] = v[i];
        return (int64_t)v.size();
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
        return -1;
    }
}

// Decodes ids into out (cap bytes, NUL-terminated when it fits); returns the text's length, or -1.
int64_t tern_spm_impl_decode(const void *h, const int32_t *ids, int64_t n, char *out, int64_t cap, char *err,
                             size_t errlen) {
    try {
        std::vector<int> v(ids, ids + n);
        std::string s;
        const auto st = static_cast<const sentencepiece::SentencePieceProcessor *>(h)->Decode(v, &s);
        if (!st.ok()) {
            set_err(err, errlen, st.ToString());
            return -1;
        }
        if ((int64_t)s.size() < cap) std::memcpy(out, s.c_str(), s.size() + 1);
        return (int64_t)s.size();
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
        return -1;
    }
}

// SentencePieceTrainer::Train with spm_train's flags in one string; 0 on success.
int tern_spm_impl_train(const char *args, char *err, size_t errlen) {
    try {
        const auto st = sentencepiece::SentencePieceTrainer::Train(args);
        if (!st.ok()) {
            set_err(err, errlen, st.ToString());
            return -1;
        }
        return 0;
    } catch (const std::exception &e) {
        set_err(err, errlen, e.what());
        return -1;
    }
}

} // extern "C"
