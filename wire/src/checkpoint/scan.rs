//! Listing a models directory: every `*.safetensors` file with its detection or the reason it
//! cannot be used. A corrupt file is a row with an error, never a failure of the listing.
