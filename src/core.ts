/**
 * The part of the public API that runs the same in Node and in a browser: the GPU device type, model
 * loading from any {@link FileFolder}, the abliteration steps and their results, prompt files, and
 * writing models and directions. `abliterate` (Node) and `abliterate/browser` both export all of it,
 * each adding the way to open a device and read folders on its platform.
 *
 * @packageDocumentation
 */

// The GPU device and its errors.
export {
  ComputeBatch,
  Gpu,
  type AdapterSummary,
  type BufferBinding,
  type GpuFeatures,
  type GpuLimits,
  type GpuRestrictions,
  type SubmitOptions,
  type Workgroups,
} from './gpu/gpu.ts';
export type { Kernel, KernelBinding, ParamValues, UniformLayout } from './gpu/kernel.ts';
export type { Defines } from './gpu/preprocess.ts';
export type { MatrixChunk, PackedMatrix } from './gpu/packedMatrix.ts';
export { formatBytes, GpuDeviceLostError, GpuError, GpuOutOfMemoryError, GpuValidationError, NoAdapterError } from './gpu/errors.ts';

// Files: folders and byte ranges, prompt files, safetensors, directions files.
export { BlobFolder, BlobSource, FileMissingError, FileTooLargeError, formatSize, MemorySource, NotRegularFileError, ReadRangeError, type ByteSource, type FileFolder } from './io/byteSource.ts';
export { DEFAULT_PROMPT_COLUMNS, PROMPT_FILE_EXTENSIONS, PromptFileError, readPrompts, type ReadPromptsOptions } from './io/prompts.ts';
export { SafetensorsError, SafetensorsFile, SafetensorsModel, type SafetensorsErrorKind, type StoredTensorInfo, type OpenOptions as SafetensorsOpenOptions, type TensorInfo } from './io/safetensors.ts';
export { MemorySink, MemoryTarget, type ByteSink, type ModelWriteOptions, type ModelWriteTarget } from './io/safetensorsWriter.ts';
export { SUPPORTED_DTYPES, type Dtype } from './io/dtype.ts';

// The model: configuration, tokenizer and chat template, weights, generation, hooks.
export { LlamaModel, openModelFiles, type LoadOptions, type ModelFiles, type Residency } from './model/model.ts';
export { detectExpertStorage, inactiveExpertParameters, type ExpertStorage } from './model/layout.ts';
export { ModelConfigError, SUPPORTED_ARCHITECTURES, type Architecture, type BlockDescription, type ModelConfig, type MoeConfig, type RopeScaling } from './model/config.ts';
export { ChatTokenizer, TokenizerError, type ChatMessage, type TokenizerFiles } from './model/tokenizer.ts';
export { WeightError, type LayerWeights, type LlamaWeights, type StreamedWeights, type TensorOverlay, type TensorSource, type DenseMlpWeights, type MoeWeights } from './model/weights.ts';
export type { ForwardStep, LlamaForward, SequenceStep } from './model/forward.ts';
export { KvCache } from './model/kvCache.ts';
export { NonFiniteError } from './model/finiteCheck.ts';
export { generate, type GenerateOptions, type Generation, type PromptRow, type SamplingOptions } from './model/generate.ts';
export { LAYER_POINTS, selectRows, TAP_POINTS, type Hook, type HookAction, HookRunner, type PositionSelector, type StepSequence, type TapPoint } from './model/taps.ts';

// Abliteration: measure, select, cut, evaluate, steer, probe, export, or all of it at once.
export { chatTokens, type ChatPrompts } from './abliterate/prefill.ts';
export { samplePrompts } from './abliterate/sampling.ts';
export {
  measure,
  type DirectionHygiene,
  type DirectionSet,
  type MeasurePosition,
  type PointScore,
  type Measurement,
  type MeasureOptions,
  type PointSubspace,
  type TokenPosition,
} from './abliterate/measure.ts';
export { instructionOffset, templateSuffix } from './abliterate/instruction.ts';
export { compareDirections, CUT_TARGETS, storedTargets, type CutTarget, type DirectionComparison } from './abliterate/dbdi.ts';
export { orthogonalTo, projectedDirection, sparsify, sparsifyCount, winsorize } from './abliterate/hygiene.ts';
export {
  detectHardening,
  HARDENING_THRESHOLDS,
  topEffectiveRank,
  verdictOf,
  weighEvidence,
  type DetectOptions,
  type DetectStage,
  type HardeningDetection,
  type HardeningEvidence,
  type HardeningRecommendation,
  type HardeningSignal,
  type HardeningVerdict,
} from './abliterate/detect.ts';
export { DEFAULT_WINDOW, rankPoints, selectPoint, type ScoreSelectionOptions, type SelectionMetric } from './abliterate/select.ts';
export { rankByAblation, type AblationRankingOptions, type CandidateTrial } from './abliterate/selectByAblation.ts';
export { applyCut, cutBasis, layerStrengths, orthonormalize, type AppliedCut, type CutOptions, type CutSpec, type CutUndo, type StrengthProfile, type LayerSelection } from './abliterate/cut.ts';
export {
  evaluateModel,
  evaluateRefusals,
  EvaluationPrompts,
  firstTokenKl,
  firstTokenLogits,
  perplexity,
  plainTextTokens,
  type Answer,
  type EvaluationRunOptions,
  type EvaluationStep,
  type ModelEvaluation,
  type ModelEvaluationOptions,
  type Prompts,
  type RefusalEvaluation,
} from './abliterate/evaluate.ts';
export { DEFAULT_REFUSAL_MARKERS, isRefusal } from './abliterate/refusal.ts';
export { steeringHooks, type Steering } from './abliterate/steer.ts';
export { ablationHooks, uploadBasis } from './abliterate/ablation.ts';
export { probe, type ProbeResult } from './abliterate/probe.ts';
export { exportModel, type ExportFiles, type ExportOptions } from './abliterate/export.ts';
export { checkDirection, directionProblem, DIRECTIONS_FORMAT, DIRECTIONS_VERSION, DirectionsFileError, readDirections, writeDirections, type Directions, type StoredDirectionSet } from './abliterate/directionsFile.ts';
export {
  CHOICE_RULE,
  cutParameters,
  DIRECTIONS_FILE,
  parseReport,
  REPORT_FILE,
  REPORT_FORMAT,
  REPORT_VERSION,
  reportOf,
  ReportFileError,
  searchReport,
  type AbliterationReport,
  type CutParameters,
  type EvaluationReport,
  type PointScoreReport,
} from './abliterate/report.ts';
export { runAbliteration, type AbliterationResult, type AbliterationSettings as RunSettings, type PromptSets, type RunCallbacks, type Stage } from './abliterate/pipeline.ts';
export type { SearchReport } from './abliterate/report.ts';
export { chooseTrial, DAMAGE_KL, optimizeCut, paretoTrials, REFUSAL_TOLERANCE, type OptimizeSettings, type SearchResult, type TrialObjectives, type TrialRecord } from './abliterate/optimize/search.ts';
export { OPTIMIZE_DEFAULTS, OPTIMIZE_KEYS, OPTIMIZE_SCHEMA, optimizeSettingsFrom, pinsFrom, searchSettingFields, type OptimizeKey, type OptimizeValues } from './abliterate/searchSettings.ts';
export { PARAMETER_NAMES, type CutParameters as SearchCutParameters } from './abliterate/optimize/space.ts';
export {
  abliterationSettings,
  booleanSetting,
  checkSetting,
  choiceSetting,
  DEFAULT_SETTINGS,
  defaultValues,
  describeRange,
  fieldOf,
  fileSetting,
  numericSetting,
  parseSettingText,
  SettingError,
  settingFields,
  settingsInGroups,
  SETTINGS_SCHEMA,
  textSetting,
  type AbliterationSettings,
  type SettingDefinition,
  type SettingField,
  type SettingGroup,
  type SettingKey,
  type SettingKind,
  type SettingMeta,
  type SettingValues,
} from './abliterate/settings.ts';
export { auroc, cosine, effectSize } from './abliterate/stats.ts';
export { effectiveRank, grassmannDistance, principalAngles, silhouetteScore, spectrumShares, subspaceOverlap, topSingularVectors, type Subspace } from './abliterate/subspace.ts';
