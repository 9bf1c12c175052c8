//! Contacts: one-directional, as in the original (Alice having Bob says nothing of Bob).

use std::collections::HashSet;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr,
};

use super::error::CoreError;
use super::users::user;
use crate::platform::clock::Clock;

pub mod contact {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "crate::services::core::users::user::Entity",
            from = "Column::Contact",
            to = "crate::services::core::users::user::Column::Id"
        )]
        Contact,
    }

    impl Related<crate::services::core::users::user::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Contact.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub struct Contacts {
    db: DatabaseConnection,
    clock: Clock,
}

impl Contacts {
    pub fn new(db: DatabaseConnection, clock: Clock) -> Self {
        Self { db, clock }
    }

    pub async fn add(&self, user: &str, contact: &str) -> Result<(), CoreError> {
        let row = contact::ActiveModel {
            user: Set(user.to_owned()),
            contact: Set(contact.to_owned()),
            created_at: Set(self.clock.now_millis()),
        };
        match contact::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(CoreError::AlreadyAContact)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Removes `contact` from `user`'s contacts; returns whether it was one.
    pub async fn remove(&self, user: &str, contact: &str) -> Result<bool, DbErr> {
        let removed = contact::Entity::delete_many()
            .filter(contact::Column::User.eq(user))
            .filter(contact::Column::Contact.eq(contact))
            .exec(&self.db)
            .await?;
        Ok(removed.rows_affected > 0)
    }

    /// `user`'s contacts, ordered by id, after the cursor `after`.
    pub async fn list(
        &self,
        user: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<user::Model>, DbErr> {
        let mut query = contact::Entity::find().filter(contact::Column::User.eq(user));
        if let Some(after) = after {
            query = query.filter(contact::Column::Contact.gt(after));
        }
        let rows = query
            .order_by_asc(contact::Column::Contact)
            .limit(limit)
            .find_also_related(user::Entity)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().filter_map(|(_, found)| found).collect())
    }

    /// Which of `users` `holder` has as contacts: they may see those users' phone numbers.
    pub async fn held_by(&self, holder: &str, users: &[&str]) -> Result<HashSet<String>, DbErr> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        let held = contact::Entity::find()
            .select_only()
            .column(contact::Column::Contact)
            .filter(contact::Column::User.eq(holder))
            .filter(contact::Column::Contact.is_in(users.iter().copied()))
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        Ok(held.into_iter().collect())
    }

    /// Who has `user` as a contact: they hear of `user`'s profile changes.
    pub async fn holders_of(&self, user: &str) -> Result<Vec<String>, DbErr> {
        contact::Entity::find()
            .select_only()
            .column(contact::Column::User)
            .filter(contact::Column::Contact.eq(user))
            .into_tuple::<String>()
            .all(&self.db)
            .await
    }
}
