//! Pictures as the other services see them. pictures stores them and answers "is this a name
//! I stored" ([`PictureCatalog`]); core keeps the names in `profile_pic` and `picture` and
//! answers "who shows this picture" ([`PictureUsage`]), which decides who may read one and
//! which ones nobody shows any more. Neither service imports the other.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::bus::Event;
use super::ids::is_hex128;

/// Extensions of the stored formats: every upload is re-encoded to one of them.
pub const STORED_EXTENSIONS: [&str; 2] = ["jpg", "png"];

/// Whether `name` has the shape of a stored picture's name: 32 lowercase hex digits (the
/// first 128 bits of the SHA-256 of its bytes), a dot and `jpg` or `png`. The original's
/// names were 32 hex digits and the client's extension, so old clients keep working.
pub fn is_picture_name(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(hash, extension)| is_hex128(hash) && STORED_EXTENSIONS.contains(&extension))
}

#[derive(Debug, thiserror::Error)]
#[error("pictures cannot be looked up: {0}")]
pub struct PictureLookupError(#[source] pub anyhow::Error);

/// What pictures knows of a name a user wants to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claimed {
    /// Not a picture it stored.
    Unknown,
    /// Stored, and this user uploaded it.
    Uploader,
    /// Stored by others: the asker decides whether this user may see it.
    Stored,
}

/// Answered by pictures: is `name` one it stored, and did `user` upload it? A stored picture
/// is also marked as in use, so the orphan sweep does not delete it between this answer and
/// the asker saving the name.
pub trait PictureCatalog: Send + Sync {
    fn claim<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Claimed, PictureLookupError>>;
}

pub type SharedCatalog = Arc<dyn PictureCatalog>;

/// How many conversations [`PictureUse`] lists; past it, ask [`PictureUsage::shown_to`].
pub const LISTED_CONVERSATIONS: u64 = 8;

/// Where a picture is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PictureUse {
    /// Some user's `profile_pic`: every signed-in user may see it.
    pub profile: bool,
    /// Conversations whose `picture` it is (at most [`LISTED_CONVERSATIONS`]): their members
    /// may see it.
    pub conversations: Vec<String>,
    /// It is the picture of more conversations than listed.
    pub more: bool,
}

/// Answered by core, from the `profile_pic` and `picture` columns.
pub trait PictureUsage: Send + Sync {
    fn usage<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PictureUse, PictureLookupError>>;

    /// Whether `user` is shown `name`: it is someone's profile picture, or the picture of a
    /// conversation `user` is a member of. One question, however many conversations show it.
    fn shown_to<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, PictureLookupError>>;

    /// Which of `names` are shown anywhere.
    fn in_use<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashSet<String>, PictureLookupError>>;
}

pub type SharedUsage = Arc<dyn PictureUsage>;

/// core stopped showing `name` somewhere: a profile or conversation picture was replaced or
/// cleared. Caches of [`PictureUse`] drop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PictureReleased {
    pub name: String,
}

impl Event for PictureReleased {
    const SUBJECT: &'static str = "core.picture_released";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_names_are_a_hash_and_a_stored_extension() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert!(is_picture_name(&format!("{hash}.jpg")));
        assert!(is_picture_name(&format!("{hash}.png")));
        for bad in [
            hash.to_owned(),
            format!("{hash}.gif"),
            format!("{hash}.jpg.png"),
            format!("{}.jpg", &hash[1..]),
            format!("{}.jpg", hash.to_uppercase()),
            "../etc/passwd.jpg".to_owned(),
            String::new(),
        ] {
            assert!(!is_picture_name(&bad), "{bad:?}");
        }
    }
}
