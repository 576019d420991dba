"""Stream simulation (`fmrl-sdk simulate`) and event streams from data (`fmrl-sdk make-stream`)."""
