"""The bundled tiny task: movie reviews of mixed sentiment, a tokenizer and a small Llama, built locally."""
