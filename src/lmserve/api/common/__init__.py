"""What every API surface uses: errors, guards, streaming, the chat and completion core."""
