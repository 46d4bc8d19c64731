//! Policy lines in the database (SQLite or PostgreSQL through sqlx), and a
//! casbin adapter over them.
//!
//! One table, `policy_rules (id, ptype, v0..v5)`, the layout casbin
//! adapters use: `ptype` is `p` or `g`, `v0..` the fields. Rows keep their
//! order by `id`. The store takes an open pool (the gateway shares one
//! database for everything) and creates its table if missing; the SQL is
//! the same on both backends.

use sqlx::{AnyPool, Row};

use crate::model::{Effect, PolicyError, PolicyText};

/// Fields per row (casbin's v0..v5).
const FIELDS: usize = 6;

/// A database problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A query failed.
    #[error("policy database: {what}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The stored lines do not validate.
    #[error("the stored policy is invalid: {0}")]
    Invalid(#[from] PolicyError),
    /// A rule with more fields than the table holds.
    #[error("a {ptype} rule with {fields} fields; at most {FIELDS}")]
    TooWide {
        /// `p` or `g`.
        ptype: String,
        /// Its field count.
        fields: usize,
    },
}

fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// The policy table.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    pool: AnyPool,
}

impl PolicyStore {
    /// Use `pool`, creating the table if it is missing.
    pub async fn new(pool: AnyPool) -> Result<PolicyStore, StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS policy_rules (\
             id BIGINT PRIMARY KEY, ptype TEXT NOT NULL, \
             v0 TEXT NOT NULL, v1 TEXT NOT NULL, v2 TEXT NOT NULL, \
             v3 TEXT NOT NULL, v4 TEXT NOT NULL, v5 TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(query("creating policy_rules"))?;
        Ok(PolicyStore { pool })
    }

    /// Every row as `[ptype, v0, ...]`, trailing empty fields dropped, in order.
    pub async fn rows(&self) -> Result<Vec<Vec<String>>, StoreError> {
        let rows =
            sqlx::query("SELECT ptype, v0, v1, v2, v3, v4, v5 FROM policy_rules ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(query("reading policy_rules"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut v: Vec<String> = (0..=FIELDS)
                .map(|i| r.try_get::<String, _>(i))
                .collect::<Result<_, _>>()
                .map_err(query("decoding policy_rules"))?;
            while v.last().is_some_and(String::is_empty) {
                v.pop();
            }
            out.push(v);
        }
        Ok(out)
    }

    /// The stored policy, validated like a file (line N is the Nth row).
    pub async fn load(&self) -> Result<PolicyText, StoreError> {
        let text: String = self
            .rows()
            .await?
            .iter()
            .map(|r| r.join(", ") + "\n")
            .collect();
        Ok(PolicyText::parse(&text)?)
    }

    /// Replace everything with `text`, in one transaction.
    pub async fn replace(&self, text: &PolicyText) -> Result<(), StoreError> {
        let mut rows: Vec<Vec<String>> = text
            .memberships
            .iter()
            .map(|m| vec!["g".to_owned(), m.member.clone(), m.group.clone()])
            .collect();
        rows.extend(text.rules.iter().map(|r| {
            vec![
                "p".to_owned(),
                r.subject.clone(),
                r.kind.as_str().to_owned(),
                r.object.clone(),
                r.action.clone(),
                match r.effect {
                    Effect::Allow => "allow",
                    Effect::Deny => "deny",
                }
                .to_owned(),
            ]
        }));
        let mut tx = self.pool.begin().await.map_err(query("beginning"))?;
        sqlx::query("DELETE FROM policy_rules")
            .execute(&mut *tx)
            .await
            .map_err(query("clearing policy_rules"))?;
        insert_rows(&mut tx, 0, &rows).await?;
        tx.commit().await.map_err(query("committing"))?;
        Ok(())
    }

    /// Append rows (`[ptype, v0, ...]`) after the last one.
    pub async fn add(&self, rows: &[Vec<String>]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(query("beginning"))?;
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id) + 1, 0) FROM policy_rules")
            .fetch_one(&mut *tx)
            .await
            .map_err(query("finding the next id"))?;
        insert_rows(&mut tx, next, rows).await?;
        tx.commit().await.map_err(query("committing"))?;
        Ok(())
    }

    /// Remove rows of `ptype` whose fields from `from` on equal `values`
    /// (an empty value matches anything). Returns how many went.
    pub async fn remove(
        &self,
        ptype: &str,
        from: usize,
        values: &[String],
    ) -> Result<u64, StoreError> {
        let mut sql = String::from("DELETE FROM policy_rules WHERE ptype = $1");
        let mut binds = vec![ptype.to_owned()];
        for (i, v) in values.iter().enumerate() {
            let col = from + i;
            if v.is_empty() || col >= FIELDS {
                continue;
            }
            binds.push(v.clone());
            sql.push_str(&format!(" AND v{col} = ${}", binds.len()));
        }
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let done = q
            .execute(&self.pool)
            .await
            .map_err(query("removing rules"))?;
        Ok(done.rows_affected())
    }
}

async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    first_id: i64,
    rows: &[Vec<String>],
) -> Result<(), StoreError> {
    for (i, r) in rows.iter().enumerate() {
        let (ptype, fields) = r
            .split_first()
            .map_or(("", &[][..]), |(p, f)| (p.as_str(), f));
        if fields.len() > FIELDS {
            return Err(StoreError::TooWide {
                ptype: ptype.to_owned(),
                fields: fields.len(),
            });
        }
        let mut q = sqlx::query(
            "INSERT INTO policy_rules (id, ptype, v0, v1, v2, v3, v4, v5) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(first_id + i64::try_from(i).unwrap_or(i64::MAX))
        .bind(ptype.to_owned());
        for c in 0..FIELDS {
            q = q.bind(fields.get(c).cloned().unwrap_or_default());
        }
        q.execute(&mut **tx)
            .await
            .map_err(query("inserting a rule"))?;
    }
    Ok(())
}

/// A casbin adapter over [`PolicyStore`]: an `Enforcer` built on it loads
/// from and writes through to the database.
#[derive(Debug, Clone)]
pub struct SqlxAdapter {
    store: PolicyStore,
}

impl SqlxAdapter {
    /// An adapter over `store`.
    pub fn new(store: PolicyStore) -> SqlxAdapter {
        SqlxAdapter { store }
    }
}

fn adapter_error(e: StoreError) -> casbin::Error {
    casbin::Error::AdapterError(casbin::error::AdapterError(Box::new(e)))
}

fn with_ptype(ptype: &str, rule: Vec<String>) -> Vec<String> {
    std::iter::once(ptype.to_owned()).chain(rule).collect()
}

#[async_trait::async_trait]
impl casbin::Adapter for SqlxAdapter {
    async fn load_policy(&mut self, m: &mut dyn casbin::Model) -> casbin::Result<()> {
        for row in self.store.rows().await.map_err(adapter_error)? {
            if let Some((ptype, rule)) = row.split_first() {
                let sec = &ptype[..ptype.len().min(1)];
                m.add_policy(sec, ptype, rule.to_vec());
            }
        }
        Ok(())
    }

    async fn load_filtered_policy<'a>(
        &mut self,
        m: &mut dyn casbin::Model,
        f: casbin::Filter<'a>,
    ) -> casbin::Result<()> {
        for row in self.store.rows().await.map_err(adapter_error)? {
            let Some((ptype, rule)) = row.split_first() else {
                continue;
            };
            let filter = if ptype.starts_with('p') { &f.p } else { &f.g };
            let keep = filter
                .iter()
                .enumerate()
                .all(|(i, want)| want.is_empty() || rule.get(i).is_some_and(|v| v == want));
            if keep {
                let sec = &ptype[..ptype.len().min(1)];
                m.add_policy(sec, ptype, rule.to_vec());
            }
        }
        Ok(())
    }

    async fn save_policy(&mut self, m: &mut dyn casbin::Model) -> casbin::Result<()> {
        let mut text = String::new();
        for sec in ["g", "p"] {
            let Some(types) = m.get_model().get(sec) else {
                continue;
            };
            let mut names: Vec<&String> = types.keys().collect();
            names.sort();
            for ptype in names {
                for rule in m.get_policy(sec, ptype) {
                    text.push_str(&with_ptype(ptype, rule).join(", "));
                    text.push('\n');
                }
            }
        }
        let parsed = PolicyText::parse(&text).map_err(|e| adapter_error(e.into()))?;
        self.store.replace(&parsed).await.map_err(adapter_error)
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        self.store
            .replace(&PolicyText::default())
            .await
            .map_err(adapter_error)
    }

    fn is_filtered(&self) -> bool {
        false
    }

    async fn add_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        self.add_policies(_sec, ptype, vec![rule]).await
    }

    async fn add_policies(
        &mut self,
        _sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        // Validate as policy lines first: the database holds nothing a
        // policy file could not.
        let lines: String = rules
            .iter()
            .map(|r| with_ptype(ptype, r.clone()).join(", ") + "\n")
            .collect();
        PolicyText::parse(&lines).map_err(|e| adapter_error(e.into()))?;
        let rows: Vec<Vec<String>> = rules.into_iter().map(|r| with_ptype(ptype, r)).collect();
        self.store.add(&rows).await.map_err(adapter_error)?;
        Ok(true)
    }

    async fn remove_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        let n = self
            .store
            .remove(ptype, 0, &rule)
            .await
            .map_err(adapter_error)?;
        Ok(n > 0)
    }

    async fn remove_policies(
        &mut self,
        sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        let mut any = false;
        for r in rules {
            any |= self.remove_policy(sec, ptype, r).await?;
        }
        Ok(any)
    }

    async fn remove_filtered_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        let n = self
            .store
            .remove(ptype, field_index, &field_values)
            .await
            .map_err(adapter_error)?;
        Ok(n > 0)
    }
}
