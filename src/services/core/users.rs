//! The `user` table, the profile rules, and the [`UserDirectory`] auth logs users in through.

use anyhow::Context as _;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait as _, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel as _, QueryFilter, SqlErr,
};

use super::pictures::{PictureNames, PictureRefused};
use crate::platform::clock::Clock;
use crate::platform::db::by_key;
use crate::platform::ids::random_hex128;
use crate::platform::users::{
    DirectoryError, DirectoryResult, KnownUser, Login, NewProfile, UserDirectory, UserRecord,
};

pub mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "user")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub username: Option<String>,
        pub bio: String,
        pub profile_pic: String,
        pub first_name: String,
        pub last_name: String,
        pub phone_number: Option<String>,
        pub email: Option<String>,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The longest first name, last name, bio or picture reference accepted.
const MAX_FIELD_CHARS: usize = 256;

pub struct Users {
    db: DatabaseConnection,
    clock: Clock,
    pictures: PictureNames,
}

/// A partial profile update: absent fields keep their value (the original overwrote them all).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    /// `null` clears the username; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^([A-Za-z0-9_.]{3,32})?$")]
    pub username: Option<Option<String>>,
    #[schema(max_length = 256)]
    pub bio: Option<String>,
    #[schema(max_length = 256)]
    pub profile_pic: Option<String>,
    #[schema(max_length = 256)]
    pub first_name: Option<String>,
    #[schema(max_length = 256)]
    pub last_name: Option<String>,
    /// Original clients send the whole user back; its id and number are not changed this way.
    #[serde(default, rename = "id")]
    #[schema(value_type = Option<String>)]
    pub _id: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "phone_number")]
    #[schema(value_type = Option<String>)]
    pub _phone_number: Option<serde::de::IgnoredAny>,
}

/// The original `POST /user` body: a whole profile.
#[derive(Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NewUser {
    /// Must be the caller's own id when sent.
    pub id: Option<String>,
    #[schema(pattern = r"^([A-Za-z0-9_.]{3,32})?$")]
    pub username: Option<String>,
    #[schema(max_length = 256)]
    pub bio: String,
    #[schema(max_length = 256)]
    pub profile_pic: String,
    #[schema(max_length = 256)]
    pub first_name: String,
    #[schema(max_length = 256)]
    pub last_name: String,
    /// Must be the caller's verified number when sent.
    pub phone_number: Option<String>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// `u-` + 128 random bits, the original's user id form.
pub fn new_user_id() -> String {
    format!("u-{}", random_hex128())
}

impl Users {
    pub fn new(db: DatabaseConnection, clock: Clock, pictures: PictureNames) -> Self {
        Self {
            db,
            clock,
            pictures,
        }
    }

    async fn check_picture(&self, name: &str, user: &str) -> DirectoryResult<()> {
        self.pictures
            .check("profile_pic", name, user)
            .await
            .map_err(|refused| match refused {
                PictureRefused::Lookup(err) => DirectoryError::Unavailable(err.to_string()),
                refused => DirectoryError::Invalid(refused.to_string()),
            })
    }

    pub async fn by_id(&self, id: &str) -> Result<Option<user::Model>, DbErr> {
        by_key(user::Entity::find_by_id(id), &self.db).await
    }

    pub async fn by_username(&self, username: &str) -> Result<Option<user::Model>, DbErr> {
        by_key(
            user::Entity::find().filter(user::Column::Username.eq(username.to_ascii_lowercase())),
            &self.db,
        )
        .await
    }

    pub async fn by_login(&self, login: &Login) -> Result<Option<user::Model>, DbErr> {
        self.find_by_login(login).await
    }

    /// Applies the fields `patch` carries to the profile `found` (as just read) and answers the result.
    pub async fn update_profile(
        &self,
        found: user::Model,
        patch: ProfilePatch,
    ) -> DirectoryResult<user::Model> {
        let mut profile = NewProfile {
            username: found.username.clone(),
            bio: found.bio.clone(),
            profile_pic: found.profile_pic.clone(),
            first_name: found.first_name.clone(),
            last_name: found.last_name.clone(),
        };
        if let Some(username) = patch.username {
            profile.username = username;
        }
        let fields = [
            (patch.bio, &mut profile.bio),
            (patch.profile_pic, &mut profile.profile_pic),
            (patch.first_name, &mut profile.first_name),
            (patch.last_name, &mut profile.last_name),
        ];
        for (sent, field) in fields {
            if let Some(value) = sent {
                *field = value;
            }
        }
        normalise(&mut profile);
        validate_profile(&profile, false)?;
        if profile.profile_pic != found.profile_pic {
            self.check_picture(&profile.profile_pic, &found.id).await?;
        }
        let mut row = found.into_active_model();
        row.username = Set(profile.username);
        row.bio = Set(profile.bio);
        row.profile_pic = Set(profile.profile_pic);
        row.first_name = Set(profile.first_name);
        row.last_name = Set(profile.last_name);
        row.update(&self.db).await.map_err(conflict_or_backend)
    }

    async fn find_by_login(&self, login: &Login) -> Result<Option<user::Model>, sea_orm::DbErr> {
        let column = login_column(login);
        by_key(
            user::Entity::find().filter(column.eq(login.as_str())),
            &self.db,
        )
        .await
    }

    /// The user holding `login`, created blank if there is none; says whether it was created.
    pub async fn ensure(&self, login: &Login) -> DirectoryResult<(user::Model, bool)> {
        // Most logins are returning users: one read, no write.
        if let Some(found) = self
            .find_by_login(login)
            .await
            .context("looking up a user by login")?
        {
            return Ok((found, false));
        }
        let mut row = empty_user(login, self.clock.now_millis());
        row.id = Set(new_user_id());
        // Insert-if-absent on the login's unique column, as the original's upsert did, so two
        // concurrent first logins of one number make one user.
        let inserted = user::Entity::insert(row)
            .on_conflict(
                OnConflict::column(login_column(login))
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .context("creating a user")?;
        let found = self
            .find_by_login(login)
            .await
            .context("looking up a user by login")?
            .ok_or_else(|| anyhow::anyhow!("user for {login} vanished after insert"))?;
        Ok((found, inserted == 1))
    }

    async fn register(
        &self,
        login: &Login,
        mut profile: NewProfile,
    ) -> DirectoryResult<UserRecord> {
        normalise(&mut profile);
        validate_profile(&profile, true)?;
        let id = new_user_id();
        // A user not yet created uploaded nothing: only pictures shown to all (profiles).
        self.check_picture(&profile.profile_pic, &id).await?;
        let mut row = empty_user(login, self.clock.now_millis());
        row.id = Set(id.clone());
        row.username = Set(profile.username);
        row.bio = Set(profile.bio);
        row.profile_pic = Set(profile.profile_pic);
        row.first_name = Set(profile.first_name);
        row.last_name = Set(profile.last_name);
        user::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
            .map_err(conflict_or_backend)?;
        let created = by_key(user::Entity::find_by_id(id), &self.db)
            .await
            .context("reading a registered user")?
            .ok_or_else(|| anyhow::anyhow!("registered user vanished"))?;
        Ok(record(created))
    }
}

fn conflict_or_backend(err: DbErr) -> DirectoryError {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => {
            DirectoryError::Conflict("a user with this login or username already exists".into())
        }
        _ => DirectoryError::Backend(anyhow::Error::new(err).context("writing a profile")),
    }
}

/// Usernames are unique regardless of case because they are stored lowercased; an empty one
/// means none.
fn normalise(profile: &mut NewProfile) {
    profile.username = profile
        .username
        .take()
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty());
}

fn login_column(login: &Login) -> user::Column {
    match login {
        Login::Phone(_) => user::Column::PhoneNumber,
        Login::Email(_) => user::Column::Email,
    }
}

fn empty_user(login: &Login, now: i64) -> user::ActiveModel {
    let (phone_number, email) = match login {
        Login::Phone(phone) => (Some(phone.as_str().to_owned()), None),
        Login::Email(email) => (None, Some(email.as_str().to_owned())),
    };
    user::ActiveModel {
        id: Set(String::new()),
        username: Set(None),
        bio: Set(String::new()),
        profile_pic: Set(String::new()),
        first_name: Set(String::new()),
        last_name: Set(String::new()),
        phone_number: Set(phone_number),
        email: Set(email),
        created_at: Set(now),
    }
}

/// Lengths and the username rule always; both names when registering, as the original did
/// (a user made by a first login has none yet, and may fill them in later).
fn validate_profile(profile: &NewProfile, names_required: bool) -> DirectoryResult<()> {
    if names_required
        && (profile.first_name.trim().is_empty() || profile.last_name.trim().is_empty())
    {
        return Err(DirectoryError::Invalid(
            "first_name and last_name are required".into(),
        ));
    }
    for (name, value) in [
        ("first_name", &profile.first_name),
        ("last_name", &profile.last_name),
        ("bio", &profile.bio),
        ("profile_pic", &profile.profile_pic),
    ] {
        if value.chars().count() > MAX_FIELD_CHARS {
            return Err(DirectoryError::Invalid(format!(
                "{name} is longer than {MAX_FIELD_CHARS} characters"
            )));
        }
        // PostgreSQL cannot store it (and SQLite would, so the columns would differ).
        if value.contains('\0') {
            return Err(DirectoryError::Invalid(format!(
                "{name} contains a NUL character"
            )));
        }
    }
    if let Some(username) = &profile.username
        && !is_valid_username(username)
    {
        return Err(DirectoryError::Invalid(
            "username must be 3 to 32 of a-z, 0-9, _ and .".into(),
        ));
    }
    Ok(())
}

pub fn is_valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// `user` in full, as they themself and those who hold them as a contact see them.
pub fn record(user: user::Model) -> UserRecord {
    UserRecord {
        id: user.id,
        username: user.username,
        bio: user.bio,
        profile_pic: user.profile_pic,
        first_name: user.first_name,
        last_name: user.last_name,
        phone_number: Some(user.phone_number.unwrap_or_default()),
    }
}

impl UserDirectory for Users {
    fn ensure_user<'a>(&'a self, login: &'a Login) -> BoxFuture<'a, DirectoryResult<KnownUser>> {
        async move {
            let (user, created) = self.ensure(login).await?;
            Ok(KnownUser {
                id: user.id,
                created,
            })
        }
        .boxed()
    }

    fn register_user<'a>(
        &'a self,
        login: &'a Login,
        profile: NewProfile,
    ) -> BoxFuture<'a, DirectoryResult<UserRecord>> {
        self.register(login, profile).boxed()
    }
}
