//! Training data and objective for the MLP: features and target from a prepared table.

use std::collections::BTreeSet;

use aigc_crds::dataset::{ColumnType, DataSchema};
use candle_core::{D, DType, Device, Tensor};

use super::{Evaluation, TrainOptions};
use crate::models::mlp::{Feature, Task, normalise, text_number};
use crate::models::{Mlp, MlpConfig};
use crate::rng::Rng;
use crate::train::data::PreparedDataset;
use crate::{Result, WorkerError};

/// Integer targets with at most this many distinct values are classified by default.
const MAX_INFERRED_CLASSES: usize = 20;

pub(crate) struct Tabular {
    pub mlp: Mlp,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    n_train: usize,
}

impl Tabular {
    pub fn build(
        dataset: &PreparedDataset,
        options: &TrainOptions,
        split_rng: &mut Rng,
        init_rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let table = dataset.table()?;
        let schema = dataset.schema()?;
        Self::from_table(table, schema, options, split_rng, init_rng, device)
    }

    /// Build from a table (header and rows of text values) described by `schema`.
    pub fn from_table(
        (header, rows): (Vec<String>, Vec<Vec<String>>),
        schema: &DataSchema,
        options: &TrainOptions,
        split_rng: &mut Rng,
        init_rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let target_name = options
            .target
            .clone()
            .unwrap_or_else(|| names.last().expect("schemas have columns").to_string());
        let target_col = schema
            .columns
            .iter()
            .find(|c| c.name == target_name)
            .ok_or_else(|| {
                WorkerError::InvalidArgument(format!(
                    "--target {target_name:?} is not a column of the dataset; columns are {names:?}"
                ))
            })?;
        let position = |name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                WorkerError::Corrupt(format!(
                    "column {name:?} is in the schema but not in the shards"
                ))
            })
        };
        let target_pos = position(&target_name)?;
        let mut feature_cols = Vec::new();
        for c in &schema.columns {
            if c.name == target_name {
                continue;
            }
            match c.type_ {
                ColumnType::Integer | ColumnType::Number | ColumnType::Boolean => {
                    feature_cols.push((c.name.clone(), position(&c.name)?));
                }
                ColumnType::String | ColumnType::Timestamp => {
                    tracing::warn!(column = %c.name, "not a numeric or boolean column; the MLP does not use it");
                }
            }
        }
        if feature_cols.is_empty() {
            return Err(WorkerError::InvalidArgument(format!(
                "the dataset has no integer, number or boolean column besides the target {target_name:?}"
            )));
        }
        let rows: Vec<&Vec<String>> = rows.iter().filter(|r| !r[target_pos].is_empty()).collect();
        let distinct: BTreeSet<&str> = rows.iter().map(|r| r[target_pos].as_str()).collect();
        let task = match options.task {
            Some(task) => task,
            None => match target_col.type_ {
                ColumnType::String | ColumnType::Boolean | ColumnType::Timestamp => {
                    Task::Classification
                }
                ColumnType::Integer if distinct.len() <= MAX_INFERRED_CLASSES => {
                    Task::Classification
                }
                ColumnType::Integer | ColumnType::Number => Task::Regression,
            },
        };
        if rows.len() < 2 {
            return Err(WorkerError::InvalidData(format!(
                "{} rows have a value for the target {target_name:?}; training needs at least 2",
                rows.len()
            )));
        }

        let mut order: Vec<usize> = (0..rows.len()).collect();
        split_rng.shuffle(&mut order);
        let n_val = ((rows.len() as f64 * options.validation_fraction).round() as usize)
            .clamp(1, rows.len() - 1);
        let (val_idx, train_idx) = order.split_at(n_val);

        let parse = |row: &[String], pos: usize, name: &str| -> Result<Option<f64>> {
            text_number(&row[pos]).ok_or_else(|| {
                WorkerError::Corrupt(format!("column {name:?}: {:?} is not a number", row[pos]))
            })
        };
        let mut features = Vec::with_capacity(feature_cols.len());
        for (name, pos) in &feature_cols {
            let mut values = Vec::new();
            for &i in train_idx {
                if let Some(x) = parse(rows[i], *pos, name)? {
                    values.push(x);
                }
            }
            let (mean, std) = mean_std(&values);
            features.push(Feature {
                name: name.clone(),
                mean,
                std,
            });
        }
        let encode_x = |idx: &[usize]| -> Result<Tensor> {
            let mut v = Vec::with_capacity(idx.len() * features.len());
            for &i in idx {
                for (f, (name, pos)) in features.iter().zip(&feature_cols) {
                    v.push(normalise(parse(rows[i], *pos, name)?, f));
                }
            }
            Ok(Tensor::from_vec(v, (idx.len(), features.len()), device)?)
        };

        let mut config = MlpConfig {
            task,
            features: features.clone(),
            target: target_name.clone(),
            labels: Vec::new(),
            target_mean: None,
            target_std: None,
            hidden: options.hidden.clone(),
        };
        let (train_y, val_y) = match task {
            Task::Classification => {
                let mut labels: Vec<String> = distinct.iter().map(|s| s.to_string()).collect();
                if labels.iter().all(|l| l.parse::<f64>().is_ok()) {
                    labels.sort_by(|a, b| {
                        a.parse::<f64>()
                            .unwrap_or(0.0)
                            .total_cmp(&b.parse().unwrap_or(0.0))
                    });
                }
                if labels.len() < 2 {
                    return Err(WorkerError::InvalidData(format!(
                        "the target {target_name:?} has only the value {labels:?}; classification needs two or more classes"
                    )));
                }
                let class = |i: usize| {
                    labels
                        .iter()
                        .position(|l| *l == rows[i][target_pos])
                        .expect("labels come from the rows") as u32
                };
                let y = |idx: &[usize]| {
                    Tensor::from_vec(
                        idx.iter().map(|&i| class(i)).collect::<Vec<_>>(),
                        idx.len(),
                        device,
                    )
                };
                let pair = (y(train_idx)?, y(val_idx)?);
                config.labels = labels;
                pair
            }
            Task::Regression => {
                let mut values = Vec::new();
                for &i in train_idx {
                    values.push(
                        parse(rows[i], target_pos, &target_name)?.expect("non-empty targets"),
                    );
                }
                let (mean, std) = mean_std(&values);
                let y = |idx: &[usize]| -> Result<Tensor> {
                    let mut v = Vec::with_capacity(idx.len());
                    for &i in idx {
                        let x =
                            parse(rows[i], target_pos, &target_name)?.expect("non-empty targets");
                        v.push(((x - mean) / std) as f32);
                    }
                    Ok(Tensor::from_vec(v, (idx.len(), 1), device)?)
                };
                config.target_mean = Some(mean);
                config.target_std = Some(std);
                (y(train_idx)?, y(val_idx)?)
            }
        };
        Ok(Tabular {
            mlp: Mlp::new(config, init_rng, device)?,
            train_x: encode_x(train_idx)?,
            val_x: encode_x(val_idx)?,
            train_y,
            val_y,
            n_train: train_idx.len(),
        })
    }

    pub fn examples(&self) -> usize {
        self.n_train
    }

    pub fn metric_name(&self) -> &'static str {
        match self.mlp.config().task {
            Task::Classification => "accuracy",
            Task::Regression => "rmse",
        }
    }

    pub fn batch_loss(&self, indices: &[usize]) -> Result<Tensor> {
        let idx = Tensor::from_vec(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            indices.len(),
            self.train_x.device(),
        )?;
        let x = self.train_x.index_select(&idx, 0)?;
        let y = self.train_y.index_select(&idx, 0)?;
        self.loss(&self.mlp.forward(&x)?, &y)
    }

    fn loss(&self, out: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(match self.mlp.config().task {
            Task::Classification => candle_nn::loss::cross_entropy(out, y)?,
            Task::Regression => candle_nn::loss::mse(out, y)?,
        })
    }

    pub fn evaluate(&self) -> Result<Evaluation> {
        let out = self.mlp.forward(&self.val_x)?;
        let loss = self.loss(&out, &self.val_y)?.to_scalar::<f32>()? as f64;
        let metric = match self.mlp.config().task {
            Task::Classification => {
                let hits = out
                    .argmax(D::Minus1)?
                    .eq(&self.val_y)?
                    .to_dtype(DType::F32)?;
                hits.mean_all()?.to_scalar::<f32>()? as f64
            }
            Task::Regression => loss.sqrt() * self.mlp.config().target_std.unwrap_or(1.0),
        };
        Ok(Evaluation { loss, metric })
    }
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 1.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    (mean, if std > 1e-12 { std } else { 1.0 })
}
