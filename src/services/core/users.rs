//! The `user` table and the [`UserDirectory`] auth logs users in through.

use anyhow::Context as _;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, SqlErr,
};

use crate::platform::bus::unix_millis;
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
}

/// `u-` + 128 random bits, the original's user id form.
pub fn new_user_id() -> String {
    format!("u-{}", random_hex128())
}

impl Users {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn find_by_login(&self, login: &Login) -> Result<Option<user::Model>, sea_orm::DbErr> {
        let column = login_column(login);
        user::Entity::find()
            .filter(column.eq(login.as_str()))
            .one(&self.db)
            .await
    }

    async fn ensure(&self, login: &Login) -> DirectoryResult<KnownUser> {
        // Most logins are returning users: one read, no write.
        if let Some(found) = self
            .find_by_login(login)
            .await
            .context("looking up a user by login")?
        {
            return Ok(KnownUser {
                id: found.id,
                created: false,
            });
        }
        let mut row = empty_user(login);
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
        Ok(KnownUser {
            id: found.id,
            created: inserted == 1,
        })
    }

    async fn register(&self, login: &Login, profile: NewProfile) -> DirectoryResult<UserRecord> {
        validate_profile(&profile)?;
        let mut row = empty_user(login);
        let id = new_user_id();
        row.id = Set(id.clone());
        row.username = Set(profile.username);
        row.bio = Set(profile.bio);
        row.profile_pic = Set(profile.profile_pic);
        row.first_name = Set(profile.first_name);
        row.last_name = Set(profile.last_name);
        match user::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => {}
            Err(err) => {
                return Err(match err.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(_)) => DirectoryError::Conflict(
                        "a user with this login or username already exists".into(),
                    ),
                    _ => DirectoryError::Backend(anyhow::Error::new(err).context("registering")),
                });
            }
        }
        let created = user::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .context("reading a registered user")?
            .ok_or_else(|| anyhow::anyhow!("registered user vanished"))?;
        Ok(record(created))
    }
}

fn login_column(login: &Login) -> user::Column {
    match login {
        Login::Phone(_) => user::Column::PhoneNumber,
        Login::Email(_) => user::Column::Email,
    }
}

fn empty_user(login: &Login) -> user::ActiveModel {
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
        created_at: Set(unix_millis()),
    }
}

/// The original required both names; usernames follow the rule core applies everywhere.
fn validate_profile(profile: &NewProfile) -> DirectoryResult<()> {
    if profile.first_name.trim().is_empty() || profile.last_name.trim().is_empty() {
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

fn record(user: user::Model) -> UserRecord {
    UserRecord {
        id: user.id,
        username: user.username,
        bio: user.bio,
        profile_pic: user.profile_pic,
        first_name: user.first_name,
        last_name: user.last_name,
        phone_number: user.phone_number.unwrap_or_default(),
    }
}

impl UserDirectory for Users {
    fn ensure_user<'a>(&'a self, login: &'a Login) -> BoxFuture<'a, DirectoryResult<KnownUser>> {
        self.ensure(login).boxed()
    }

    fn register_user<'a>(
        &'a self,
        login: &'a Login,
        profile: NewProfile,
    ) -> BoxFuture<'a, DirectoryResult<UserRecord>> {
        self.register(login, profile).boxed()
    }
}
