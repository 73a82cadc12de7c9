"""Data: decoding, audio, face tracking, the lower-face mask, the crop store, preprocessing, audio features."""
